//! The options of one run, typed at the edge: clap `ValueEnum`s for the modes, scopes,
//! criteria and `--include` items, and `RunOptions`, which the CLI and the Python package fill.

use crate::check::VerifyOptions;
use crate::prune::weights::{Include, Scope};
use crate::prune::RoundTo;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Per-weight zeroing (the default when --structured is not given).
    #[value(skip)]
    Weights,
    /// Conv output channels and linear hidden units.
    Channels,
    /// Attention heads.
    Heads,
    /// Heads first, then channels / hidden units.
    #[value(name = "heads,channels", alias = "channels,heads")]
    HeadsChannels,
}

/// `--scope`: which scopes a mode accepts is checked by `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// Per-weight: one EMP group per output unit's incoming weights.
    Unit,
    /// Per-weight: one group per tensor. Structured: one group per coupled group / attention block.
    Layer,
    /// Per-weight: one group over all raw scores. Structured: one EMP over all groups' units.
    Global,
    /// Per-weight (default): one group over all scores, each tensor's divided by its mean.
    Normalized,
}

/// `--criterion`: which criteria a mode accepts is checked by `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CriterionArg {
    /// Per-weight (default): |w|.
    Magnitude,
    /// Per-weight: Wanda |w_ij|·‖x_j‖₂ (needs --calibration; default scope unit).
    Wanda,
    /// Structured (default): L2 norm of each unit's weights.
    L2,
    /// Structured: L1 norm of each unit's weights.
    L1,
    /// Heads: same as l2 (the default).
    Weight,
    /// Structured: calibration activations (needs --calibration).
    Activation,
}

/// `--latency-in`: time latency in one engine only (both by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyIn {
    /// tract only (1 thread, as the CLI runs it).
    Tract,
    /// onnxruntime only (default optimisation level, 1 thread).
    Onnxruntime,
}

impl From<LatencyIn> for crate::check::Engine {
    fn from(l: LatencyIn) -> Self {
        match l {
            LatencyIn::Tract => crate::check::Engine::Tract,
            LatencyIn::Onnxruntime => crate::check::Engine::Onnxruntime,
        }
    }
}

/// `--include`: what the safe defaults leave alone, opted into one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IncludeArg {
    /// Per-weight: biases.
    Bias,
    /// Per-weight: normalisation scales and shifts.
    Norm,
    /// Per-weight: embedding tables.
    Embedding,
    /// Per-weight: weights whose output units have fewer than 32 inputs (depthwise filters, a
    /// stem on 1-3 channels, LSTM gates on few features).
    Small,
    /// Channels: lift the floor that keeps half of every group and at least 8 units.
    Narrow,
    /// Channels: prune a Conv that reads the model input (kept whole by default).
    Stem,
    /// Channels: in a network with depthwise convolutions, prune the bottlenecks between the
    /// depthwise groups (kept whole by default: their MACs buy little time).
    Bottleneck,
}

/// `--weight-inputs`: what a weight that is listed as a graph input too (an IR < 4 export, or
/// PyTorch's `keep_initializers_as_inputs=True`) is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightInputs {
    /// A weight (default): pruned as any other; the written model declares it as an input with
    /// its pruned shape.
    #[default]
    Constant,
    /// A run-time input whose initializer is only a default: nothing that reads it is pruned.
    Input,
}

/// Split `--include` values into the per-weight candidates and the structured floors.
pub fn includes(v: &[IncludeArg]) -> (Include, crate::prune::Floor) {
    let mut inc = Include::default();
    let mut floor = crate::prune::Floor::ON;
    for i in v {
        match i {
            IncludeArg::Bias => inc.bias = true,
            IncludeArg::Norm => inc.norm = true,
            IncludeArg::Embedding => inc.embedding = true,
            IncludeArg::Small => inc.small = true,
            IncludeArg::Narrow => floor.narrow = false,
            IncludeArg::Stem => floor.stem = false,
            IncludeArg::Bottleneck => floor.bottleneck = false,
        }
    }
    (inc, floor)
}

/// Flag combinations no model can run, found before anything is read (the CLI's usage errors,
/// exit 2): a scope or criterion the mode does not take, `--ratio` outside per-weight and
/// channels at layer scope, `--ratio` with `--beta` (the ratio decides the cut). Options are named
/// as `names` spells them (the flags, or the Python keywords).
pub fn check_combination(
    mode: Mode,
    scope: Option<ScopeArg>,
    criterion: Option<CriterionArg>,
    ratio: Option<f64>,
    beta_given: bool,
    names: &dyn crate::flags::Spelling,
) -> Result<(), String> {
    use crate::flags::Flag;
    let structured = mode != Mode::Weights;
    if let Some(s) = scope {
        if structured && !matches!(s, ScopeArg::Layer | ScopeArg::Global) {
            return Err(format!(
                "{}: structured modes take layer or global",
                names.with_value(Flag::Scope, &arg_name(&s))
            ));
        }
    }
    if let Some(c) = criterion {
        match (structured, c) {
            (false, CriterionArg::Magnitude | CriterionArg::Wanda) => {}
            (false, _) => {
                return Err(format!(
                    "{}: per-weight mode supports magnitude (default) or wanda",
                    names.with_value(Flag::Criterion, &arg_name(&c))
                ))
            }
            (true, CriterionArg::Magnitude | CriterionArg::Wanda) => {
                return Err(format!(
                    "{}: structured modes support l2 (default; 'weight' for heads), l1 or activation",
                    names.with_value(Flag::Criterion, &arg_name(&c))
                ))
            }
            (true, _) => {}
        }
    }
    if ratio.is_some() {
        if structured && (mode != Mode::Channels || scope.is_some_and(|s| s != ScopeArg::Layer)) {
            return Err(format!(
                "{} is a baseline for per-weight mode and {} at layer scope only",
                names.flag(Flag::Ratio),
                names.with_value(Flag::Structured, "channels")
            ));
        }
        if beta_given {
            return Err(format!(
                "{} prunes a fixed fraction instead of EMP's count: {} has no effect with it",
                names.flag(Flag::Ratio),
                names.flag(Flag::Beta)
            ));
        }
    }
    Ok(())
}

/// The name clap knows a value by (`heads,channels`, `normalized`, ...).
pub fn arg_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Weights => "weights",
            Mode::Channels => "channels",
            Mode::Heads => "heads",
            Mode::HeadsChannels => "heads,channels",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub force: bool,
    pub mode: Mode,
    pub beta: f64,
    /// `--beta` was given: the cut is written as asked, the fidelity guard does not move it.
    pub beta_given: bool,
    /// The fidelity guard's tolerance on the outputs' relative L2 error (None: off); see
    /// [`crate::check::guard`]. It runs on default runs without reconstruction, per-weight and
    /// structured.
    pub guard: Option<f64>,
    /// The fidelity guard judges on the user's `--inputs` instead of random inputs (without
    /// calibration): set by [`crate::run::run`] for its second pass, when the first pass's guard
    /// passed a cut on random inputs that the user's inputs then refuted.
    pub guard_on_inputs: bool,
    /// None = the mode's default.
    pub scope: Option<ScopeArg>,
    pub criterion: Option<CriterionArg>,
    pub include: Include,
    /// Structured: floors on narrow, stem and bottleneck groups (lifted by `--include narrow,stem,bottleneck`).
    pub floor: crate::prune::Floor,
    pub round_to: RoundTo,
    pub verify: bool,
    pub verify_opts: VerifyOptions,
    pub allow_mismatch: bool,
    /// Write a structural rewrite whose proof neither engine could run (refused otherwise).
    pub allow_unproven: bool,
    /// Calibration data for data-driven criteria; without it they are refused.
    pub calibration: Option<crate::check::InputSpec>,
    /// Human description of the calibration source for the report.
    pub calibration_label: Option<String>,
    /// At most this many calibration samples are used (evenly spaced over a larger file); 0: all.
    pub calibration_rows: usize,
    /// Baseline: prune a fixed fraction per group instead of EMP (per-weight mode only).
    pub fixed_ratio: Option<f64>,
    /// Reconstruct the kept weights from the calibration data (when it is given).
    pub reconstruct: bool,
    /// `onnx-emp plan`: stop after the decision (groups, N_eff, kept, params, MACs); write no
    /// model, run no reconstruction and no verification.
    pub plan: bool,
    /// Store the written model's weights as `sparse_initializer` where that saves bytes
    /// (after verification, which runs on the dense-stored model).
    pub sparse_initializers: bool,
    /// Weights that are graph inputs too: pruned as weights (default) or left as inputs.
    pub weight_inputs: WeightInputs,
}

impl RunOptions {
    /// The guard's tolerance when the run is a default one it may move: β not given, no
    /// `--ratio`, `--guard` not off.
    pub(super) fn default_guard(&self) -> Option<f64> {
        self.guard.filter(|_| !self.beta_given && self.fixed_ratio.is_none())
    }

    /// The user gave `--inputs` files: verification measures on real samples.
    pub(super) fn real_inputs(&self) -> bool {
        !self.verify_opts.inputs.files.is_empty() || self.verify_opts.inputs.npz.is_some()
    }
}

/// Calibration samples a run uses by default (`--calibration-rows`). Reconstruction's time grows
/// at least with the rows (fmnist_mobilenet per weight: 3.2 s at 128, 12.3 s at 512, 63 s at
/// 2048) while the test accuracy it reaches does not move (89.2–89.5 % at every size; channels
/// at β 0.8: fmnist_resnet 90.5 % from 512 rows on; README, "How many calibration samples").
pub const DEFAULT_CALIBRATION_ROWS: usize = 512;

/// The default per-weight scope (chosen from the measurements in docs/figures.md, "Per-weight scopes without calibration").
pub const DEFAULT_WEIGHT_SCOPE: Scope = Scope::Normalized;
/// The default scope of `--criterion wanda`: Wanda's activation norms are not comparable across
/// layers, so its paper groups per output unit.
pub const DEFAULT_WANDA_SCOPE: Scope = Scope::Unit;
