//! Pruning passes. Per-weight EMP (`weights`), structural channels/hidden units (`channels`),
//! attention heads (`heads`). Structural passes share the result types below.

use onnx_protobuf::ModelProto;
use serde::Serialize;
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

#[derive(Clone, Debug)]
pub struct StructOptions {
    pub beta: f64,
    pub scope: StructScope,
    pub criterion: Criterion,
    /// Round each kept count up to a multiple of this (1 = no rounding); never above N.
    pub round_to: usize,
    /// Calibration statistics for `Criterion::Activation`.
    pub activations: Option<Activations>,
}

impl Default for StructOptions {
    fn default() -> Self {
        StructOptions { beta: 1.0, scope: StructScope::Layer, criterion: Criterion::L2, round_to: 1, activations: None }
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
    pub n: usize,
    pub n_eff: f64,
    pub kept: usize,
    pub s_eff: f64,
    /// Why this group was left alone (a barrier node, a graph output, ...). `None` = pruned.
    pub blocked: Option<String>,
    /// Anything else the user must know (compensation folded into a bias, all-zero scores, ...).
    pub notes: Vec<String>,
}

/// Output of a structural pass.
pub struct StructuralResult {
    /// The rewritten (smaller) model.
    pub pruned: ModelProto,
    /// The dense model with the removed units' producing weights zeroed and the same constant
    /// compensation applied: it must compute the same function as `pruned`.
    pub masked: ModelProto,
    pub groups: Vec<GroupReport>,
}

pub mod channels;
pub mod groups;
pub mod heads;
pub mod rules;
