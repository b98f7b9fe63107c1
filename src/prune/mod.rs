//! Pruning passes. Per-weight EMP (`weights`), structural channels/hidden units (`channels`),
//! attention heads (`heads`). Structural passes share the result types below.

use onnx_protobuf::ModelProto;
use serde::Serialize;
use std::collections::BTreeSet;
pub mod weights;

/// How units are grouped for EMP in the structural modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StructScope {
    /// One EMP decision per coupled group (per attention block for heads).
    Layer,
    /// One EMP decision over the units of all groups together.
    Global,
}

/// Per-unit score aggregation for structural groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    L2,
    L1,
    /// Data-driven: needs `StructOptions::activations` (calibration statistics).
    Activation,
}

/// Per-feature calibration statistics by value name (see `calib::collect`).
pub type Activations = std::sync::Arc<std::collections::BTreeMap<String, crate::calib::FeatureStats>>;

/// How kept unit counts are aligned (structured modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundTo {
    /// Keep the alignment the dense width already has, up to `AUTO_ALIGN_MAX`: a 136- or 24-wide
    /// layer keeps a multiple of 8, a 12-wide one a multiple of 4, a 7-wide one any count. Odd
    /// widths defeat the blocked kernels of real engines (onnxruntime's NCHWc convolutions block
    /// on 8 channels with AVX2, 16 with AVX-512; tract's matmul kernels on 8 or 16 rows), so a
    /// pruned layer must not be less aligned than the dense one. Groups of blocked kernels at
    /// least [`AUTO_WIDE_MIN`] wide whose width is a multiple of [`AUTO_ALIGN_WIDE`] align to it,
    /// to the nearest multiple; other blocked groups that wide align to at least
    /// [`AUTO_ALIGN_MAX`] even where the dense width is not ([`RoundTo::align`]).
    Auto,
    /// Round each kept count up to a multiple of this (1 = no rounding).
    Multiple(usize),
}

/// The widest alignment `RoundTo::Auto` asks for (onnxruntime's AVX2 NCHWc block; measured
/// on the trained models in `models/`, see the README).
pub const AUTO_ALIGN_MAX: usize = 8;

/// `RoundTo::Auto` for recurrent hidden units (LSTM/GRU/RNN): tract runs their gates as
/// [G·H, ·] matmuls and a 32-unit LSTM cut to 24 ran 1.06× slower than dense, cut to 16 0.93×
/// (`scripts/zoo.py`), so hidden sizes keep up to 16-alignment.
pub const AUTO_ALIGN_MAX_RECURRENT: usize = 16;

/// `RoundTo::Auto` for the output units of a fully connected layer that reads one row per
/// sample (Gemm, or MatMul on a 2-D input): at batch 1 that is a matrix-vector product, which
/// tract computes 64 output rows at a time, so a partial tile costs a whole one plus its
/// bookkeeping. Measured on digits_mlp (128 → 64 hidden, tract, batch 1, interleaved): kept
/// widths 104/48, 96/64, 88/48, 80/40 and 56/24 all ran 1.02–1.05× *slower* than dense; 64/32
/// ran 0.93×. Sequence MatMuls (3-D inputs, many rows) use the blocked kernels: 8 as for convs.
pub const AUTO_ALIGN_MAX_ROWWISE: usize = 64;

/// `RoundTo::Auto` for groups of blocked kernels (convolutions, sequence MatMuls) at least
/// [`AUTO_WIDE_MIN`] units wide whose width is a multiple of this: onnxruntime's NCHWc block on
/// AVX-512 and the row tile of tract's x86 matmul kernels. An 8-aligned count there is computed as
/// the next multiple of 16 (ResNet-18 at 224 × 224 kept 8-aligned widths and realised 0.77–0.81
/// of its MACs cut in onnxruntime, 16-aligned 0.98; README, "Latency at deployment size").
pub const AUTO_ALIGN_WIDE: usize = 16;

/// The width from which `RoundTo::Auto` aligns blocked groups to [`AUTO_ALIGN_WIDE`], rounding
/// EMP's count to the *nearest* multiple: at most 8 units from the count EMP chose either way (a
/// tie rounds up), where rounding up by a whole step would cost up to 15 units of the cut. A
/// multiple of 16 is also one of 8 and 4, so the cut it makes is realised by every engine, while an
/// 8-aligned count of a 16-multiple width is computed as the next multiple of 16 on AVX-512:
/// yolo_block's 32 → 24 cuts realised half of their 18.7 % MACs there (tract 0.91×, onnxruntime
/// 0.96×); at 32 and 64 wide, ResNet-18 at 224 × 224 went from 28.0 % MACs at 0.72–0.77× (tract)
/// / 0.73–0.75× (onnxruntime) to 31.2 % at 0.72× / 0.70× (README, "Latency at deployment
/// size"). A 16-wide group keeps the 8-alignment (its only 16-aligned count is itself).
///
/// Blocked groups this wide whose width is not a multiple of 16 are rounded up to a multiple of
/// [`AUTO_ALIGN_MAX`] even when the dense width is less aligned (ShuffleNet V2's 58- and 116-wide
/// branches, EfficientNet's squeeze-excite widths): onnxruntime runs a convolution in its NCHWc
/// layout only when its channel counts are multiples of the block, so a 116-wide dense conv runs
/// outside it and an 8-aligned pruned one inside. ShuffleNet V2 at 224 × 224, β = 0.8, ORT at
/// its default level: kept widths 4-aligned like the dense ones cut 23.6 % of the MACs for
/// 0.809×, 8-aligned 21.0 % for 0.747× (tract 0.852× and 0.870×; `scripts/latency_cnn.py`).
/// Rounding up costs at most 7 units, a fifth of the narrowest such group.
pub const AUTO_WIDE_MIN: usize = 32;

/// How one group's kept count is aligned: a step, and whether EMP's count is rounded up to it or
/// to the nearest multiple (see [`RoundTo::align`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Align {
    pub step: usize,
    pub nearest: bool,
}

impl Align {
    /// `kept` aligned: never above `n`, never below `min` (the floors and pinned units, rounded up).
    pub fn apply(self, kept: usize, min: usize, n: usize) -> usize {
        use crate::emp::{round_nearest, round_up};
        if self.nearest {
            round_nearest(kept.max(1), n, self.step).max(round_up(min.max(1), n, self.step))
        } else {
            round_up(kept.max(min).max(1), n, self.step)
        }
    }
}

impl RoundTo {
    /// The alignment of a group of `n` units whose automatic step is capped at `max`; `blocked`
    /// groups (convolutions, sequence MatMuls) of at least [`AUTO_WIDE_MIN`] units whose width
    /// [`AUTO_ALIGN_WIDE`] divides are aligned to it, to the nearest multiple; other blocked
    /// groups that wide are rounded up to a multiple of [`AUTO_ALIGN_MAX`] whatever the dense
    /// width's own alignment. An explicit `--round-to N` always rounds up.
    pub fn align(self, n: usize, max: usize, blocked: bool) -> Align {
        if self == RoundTo::Auto && blocked && n >= AUTO_WIDE_MIN {
            if n.is_multiple_of(AUTO_ALIGN_WIDE) {
                return Align { step: AUTO_ALIGN_WIDE, nearest: true };
            }
            return Align { step: AUTO_ALIGN_MAX, nearest: false };
        }
        Align { step: self.for_width_max(n, max), nearest: false }
    }

    /// The multiple a group of `n` units is rounded to.
    pub fn for_width(self, n: usize) -> usize {
        self.for_width_max(n, AUTO_ALIGN_MAX)
    }

    /// As [`RoundTo::for_width`], with `max` as the widest automatic alignment.
    pub fn for_width_max(self, n: usize, max: usize) -> usize {
        match self {
            RoundTo::Multiple(k) => k.max(1),
            RoundTo::Auto if n == 0 => 1,
            RoundTo::Auto => (1usize << n.trailing_zeros().min(31)).min(max),
        }
    }
}

impl std::str::FromStr for RoundTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(RoundTo::Auto),
            t => match t.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(RoundTo::Multiple(k)),
                _ => Err(format!("'{s}': expected auto or an integer ≥ 1")),
            },
        }
    }
}

impl std::fmt::Display for RoundTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundTo::Auto => write!(f, "auto"),
            RoundTo::Multiple(k) => write!(f, "{k}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct StructOptions {
    pub beta: f64,
    pub scope: StructScope,
    pub criterion: Criterion,
    /// Alignment of each kept count (never above N).
    pub round_to: RoundTo,
    /// Calibration statistics for `Criterion::Activation`.
    pub activations: Option<Activations>,
    /// Baseline instead of EMP (channels, layer scope): remove this fraction of every group.
    pub fixed_ratio: Option<f64>,
    /// Floors that keep narrow and input-adjacent groups sane (channels; see [`Floor`]).
    pub floor: Floor,
    /// The groups that may be cut, as indices into the stage's report (`StructuralResult::groups`,
    /// the order of which does not depend on β; indices past it are ignored); every other group is
    /// kept whole, with a note. `None`: every group. Set by the fidelity guard's per-group pass
    /// (`run::guard`; for two stages see [`second_stage_cut`]).
    pub cut_only: Option<BTreeSet<usize>>,
}

/// The second stage's part of a two-stage [`StructOptions::cut_only`] (`--structured
/// heads,channels`): there the indices run over the run's whole report, the first stage's `first`
/// groups and then the second's, and the first stage ignores indices past its own groups.
pub fn second_stage_cut(only: &Option<BTreeSet<usize>>, first: usize) -> Option<BTreeSet<usize>> {
    only.as_ref().map(|s| s.iter().filter(|&&i| i >= first).map(|i| i - first).collect())
}

/// A β that keeps every weight of any group (⌊β·N_eff⌋ ≥ N, since N_eff ≥ 1 and N < 10¹²) and
/// every unit: the structural modes keep dead units too at this β (elsewhere they go whatever β),
/// so that the fidelity guard's "keep the model dense" is the dense model, even where removing
/// the dead units alone would move the outputs (their constants at a zero-padded border).
pub const KEEP_ALL_BETA: f64 = 1e12;

/// The start of [`guard_kept_note`].
pub(crate) const GUARD_KEPT: &str = "kept whole by the fidelity guard";

/// The note of a group that [`StructOptions::cut_only`] keeps whole.
pub(crate) fn guard_kept_note(kept: usize) -> String {
    format!(
        "{GUARD_KEPT}: cutting it to {kept} did not fit, with the other groups' cuts, \
         within the tolerance on the model's outputs (--calibration reconstructs instead)"
    )
}

/// Lower bounds on a channel group's kept count, applied after EMP (and after `--ratio`), stated
/// in the group's notes. EMP on weight norms can halve a narrow group whose few channels have
/// very different scales (a BatchNorm-folded 32-channel stem went 32 → 16 on a trained
/// MobileNetV2 while every other group lost 1–2 %), and that one cut dominates the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Floor {
    /// Keep at least half of every group and at least `min(N, NARROW_MIN)` units.
    pub narrow: bool,
    /// Keep groups whose producer reads a graph input (the stem) whole: they see the raw input,
    /// have few channels and every later layer depends on them.
    pub stem: bool,
    /// In a network whose prunable groups include depthwise convolutions (MobileNet,
    /// EfficientNet, ...), keep whole the bottlenecks between them: groups that no depthwise
    /// Conv carries and that a 1×1 conv connects to a depthwise group (an inverted residual
    /// block's narrow input/output stream, a squeeze-excitation width). The hidden groups around
    /// them are cut already, so cutting a bottleneck too cuts the MACs of those 1×1 convs a second
    /// time (a product of the two cuts), while most of the time of such networks sits in the
    /// memory-bound depthwise convolutions it does not touch. On MobileNetV2 at 224 × 224,
    /// β = 0.8, the bottlenecks gave 8.1 points of the 26.4 % MACs cut but only about 4.4 points
    /// of onnxruntime time (README, *Latency at deployment size*).
    pub bottleneck: bool,
}

/// The narrow floor never lets a group go below this many units (or N when N is smaller).
pub const NARROW_MIN: usize = 8;

impl Floor {
    pub const ON: Floor = Floor { narrow: true, stem: true, bottleneck: true };
    pub const OFF: Floor = Floor { narrow: false, stem: false, bottleneck: false };

    /// Fewest units a group of `n` may keep under the narrow floor (1 when it is off).
    pub fn min_keep(&self, n: usize) -> usize {
        if self.narrow { n.min(NARROW_MIN).max(n.div_ceil(2)) } else { 1 }.min(n).max(1)
    }
}

impl Default for StructOptions {
    fn default() -> Self {
        StructOptions {
            beta: 1.0,
            scope: StructScope::Layer,
            criterion: Criterion::L2,
            round_to: RoundTo::Multiple(1),
            activations: None,
            fixed_ratio: None,
            floor: Floor::ON,
            cut_only: None,
        }
    }
}

impl StructOptions {
    /// The statistics of `value`, or an error saying calibration is missing.
    pub fn activation(&self, value: &str) -> anyhow::Result<&crate::calib::FeatureStats> {
        self.activations
            .as_ref()
            .and_then(|a| a.get(value))
            .ok_or_else(|| anyhow::anyhow!("no calibration statistics for value '{value}'"))
    }
}

/// One coupled group of units (channels of a conv chain, hidden units of an MLP, heads of a
/// block) and what EMP decided for it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GroupReport {
    /// Stable, readable id (e.g. the first producing node's name).
    pub id: String,
    /// "channels", "hidden" or "heads".
    pub kind: String,
    /// Names of the nodes whose tensors change with this group, in graph order.
    pub members: Vec<String>,
    /// Units (channels, hidden units, heads). 0 with `kept` 0 only for an attention block that
    /// could not be read (`blocked` says why): its head count is unknown, and every head stays.
    pub n: usize,
    pub n_eff: f64,
    pub kept: usize,
    pub s_eff: f64,
    /// Why this group was left alone (a barrier node, a graph output, ...). `None` = pruned.
    pub blocked: Option<String>,
    /// Anything else the user must know (compensation folded into a bias, all-zero scores, ...).
    pub notes: Vec<String>,
    /// Indices (0..n, in the group's unit order: channel or head index) of the removed units.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<usize>,
}

/// Widest axis the structural analyses accept: they keep per-position tables, so a weight
/// declaring a wider axis (even an empty `[0, 2^40]` one) is refused before any is allocated.
pub const MAX_STRUCT_WIDTH: i64 = 1 << 24;

/// Refuse a model with a weight (initializer or Constant) wider than [`MAX_STRUCT_WIDTH`] on any
/// axis, naming it. Run first by every structural pass.
pub fn check_struct_widths(g: &onnx_protobuf::GraphProto, ix: &crate::model::graph::GraphIndex) -> anyhow::Result<()> {
    for (name, &r) in &ix.weights {
        let Some(t) = crate::model::graph::weight(g, r) else { continue };
        if let Some(d) = t.dims.iter().find(|&&d| d > MAX_STRUCT_WIDTH) {
            anyhow::bail!(
                "tensor '{name}': dimension {d} is wider than structural pruning supports ({MAX_STRUCT_WIDTH})"
            );
        }
    }
    Ok(())
}

/// Where a structural pass puts the masked model.
pub enum MaskedOut<'a> {
    /// In memory, in [`StructuralResult::masked`] (reconstruction updates it with the pruned one).
    Keep,
    /// Written to this file as soon as it is built and dropped before the pruned model is built,
    /// so that the two never share memory (channels; heads write it once built).
    File(&'a std::path::Path, &'a crate::model::io::SaveOptions),
    /// Not needed (`plan`): not built where that can be avoided.
    Drop,
}

/// Output of a structural pass.
pub struct StructuralResult {
    /// The rewritten (smaller) model.
    pub pruned: ModelProto,
    /// The dense model with the removed units' producing weights zeroed and the same constant
    /// compensation applied: it must compute the same function as `pruned`. `None` unless it was
    /// asked for with [`MaskedOut::Keep`].
    pub masked: Option<ModelProto>,
    pub groups: Vec<GroupReport>,
    /// Consumers of removed units, for reconstruction from calibration data.
    pub refit: Vec<crate::reconstruct::refit::RefitSite>,
}

impl StructuralResult {
    /// The masked model kept in memory ([`MaskedOut::Keep`], what `prune_channels` and
    /// `prune_heads` do).
    pub fn masked(&self) -> &ModelProto {
        self.masked.as_ref().expect("the masked model is kept in memory with MaskedOut::Keep")
    }
}

/// Hand a masked model to its destination: `Some` to keep in the result.
/// Run a structural pass that leaves the big weights of its pruned model hollow (see
/// [`crate::model::hollow`]) and fill them from its borrowed input, by copy.
pub(crate) fn filled_copying(
    model: &ModelProto,
    pass: impl FnOnce(&ModelProto) -> anyhow::Result<(StructuralResult, crate::model::hollow::Hollow)>,
) -> anyhow::Result<StructuralResult> {
    let (mut r, hollow) = pass(model)?;
    hollow.fill_cloned(&mut r.pruned, model)?;
    Ok(r)
}

/// As [`filled_copying`], consuming the input: its weights move into the pruned model.
pub(crate) fn filled_moving(
    mut model: ModelProto,
    pass: impl FnOnce(&ModelProto) -> anyhow::Result<(StructuralResult, crate::model::hollow::Hollow)>,
) -> anyhow::Result<StructuralResult> {
    let (mut r, hollow) = pass(&model)?;
    hollow.fill_moved(&mut r.pruned, &mut model)?;
    Ok(r)
}

pub(crate) fn place_masked(masked: ModelProto, out: &MaskedOut) -> anyhow::Result<Option<ModelProto>> {
    match out {
        MaskedOut::Keep => Ok(Some(masked)),
        MaskedOut::File(path, opts) => {
            crate::model::io::save(masked, path, opts)?;
            Ok(None)
        }
        MaskedOut::Drop => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::RoundTo;

    #[test]
    fn auto_keeps_the_dense_alignment_up_to_8() {
        let a = RoundTo::Auto;
        assert_eq!([96, 24, 12, 10, 7, 32, 1, 0, 1 << 20].map(|n| a.for_width(n)), [8, 8, 4, 2, 1, 8, 1, 1, 8]);
        assert_eq!(RoundTo::Multiple(8).for_width(7), 8);
        assert_eq!(
            [128, 96, 64, 100, 3072].map(|n| a.for_width_max(n, super::AUTO_ALIGN_MAX_ROWWISE)),
            [64, 32, 64, 4, 64]
        );
        let wide = |n, blocked| a.align(n, super::AUTO_ALIGN_MAX, blocked);
        assert_eq!(wide(128, true), super::Align { step: 16, nearest: true });
        assert_eq!(wide(96, true), super::Align { step: 16, nearest: true });
        assert_eq!(wide(32, true), super::Align { step: 16, nearest: true });
        assert_eq!(wide(16, true), super::Align { step: 8, nearest: false });
        assert_eq!(wide(136, true), super::Align { step: 8, nearest: false });
        assert_eq!(wide(24, true), super::Align { step: 8, nearest: false });
        // ShuffleNet V2's 116- and 58-wide branches are only 4- and 2-aligned: 8 from 32 wide up.
        assert_eq!(wide(116, true), super::Align { step: 8, nearest: false });
        assert_eq!(wide(58, true), super::Align { step: 8, nearest: false });
        assert_eq!(wide(20, true), super::Align { step: 4, nearest: false });
        assert_eq!([92, 46, 57].map(|k| wide(116, true).apply(k, 1, 116)), [96, 48, 64]);
        assert_eq!(wide(58, true).apply(57, 1, 58), 58);
        assert_eq!(a.align(116, super::AUTO_ALIGN_MAX_ROWWISE, false), super::Align { step: 4, nearest: false });
        assert_eq!(wide(256, false), super::Align { step: 8, nearest: false });
        assert_eq!(RoundTo::Multiple(16).align(256, 8, true), super::Align { step: 16, nearest: false });
        // EMP's 101 of 128: 96 to the nearest 16 (104 rounded up to 8); floors and pins round up.
        assert_eq!([101, 104, 1].map(|k| wide(128, true).apply(k, 1, 128)), [96, 112, 16]);
        assert_eq!(wide(128, true).apply(101, 100, 128), 112);
        assert_eq!(wide(96, true).apply(77, 1, 96), 80);
        // yolo_block's 24 of 32 is a tie: it rounds up (no cut); 23 rounds down to the floor's 16.
        assert_eq!([24, 23, 9].map(|k| wide(32, true).apply(k, 16, 32)), [32, 16, 16]);
        assert_eq!(wide(136, true).apply(101, 1, 136), 104);
        assert_eq!("auto".parse::<RoundTo>(), Ok(RoundTo::Auto));
        assert_eq!("4".parse::<RoundTo>(), Ok(RoundTo::Multiple(4)));
        assert!("0".parse::<RoundTo>().is_err() && "x".parse::<RoundTo>().is_err());
    }

    #[test]
    fn narrow_floor_keeps_half_and_at_least_eight() {
        let f = super::Floor::ON;
        assert_eq!([1, 4, 8, 10, 16, 32, 33, 320].map(|n| f.min_keep(n)), [1, 4, 8, 8, 8, 16, 17, 160]);
        assert_eq!([1, 32, 320].map(|n| super::Floor::OFF.min_keep(n)), [1, 1, 1]);
    }
}

pub mod channels;
pub mod groups;
pub mod heads;
pub mod rules;
pub mod unshare;
