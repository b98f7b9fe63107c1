//! The weights checked once, before any mode prunes them: every candidate has a type and rank its
//! op accepts (and attributes their type); for structural modes, no axis is wider than per-unit
//! tables can hold and no value is NaN or Inf (the per-weight mode rejects those where it scores
//! each weight, naming the tensor).
//!
//! Contract: reads the model only (weights streamed, no copy of the biggest); an error names the
//! tensor and, for a non-finite value, the element.

use crate::model::graph::GraphIndex;
use crate::prune::weights::{self, Include};
use crate::prune::MAX_STRUCT_WIDTH;
use anyhow::{bail, Context, Result};
use onnx_protobuf::ModelProto;

/// Checks every mode relies on, done once up front: candidate weights have a type and rank their
/// op accepts (and attributes their type), hold no NaN/Inf (a model that computes NaN is refused
/// whatever the mode), and — for structural modes — no axis so wide that per-unit tables could
/// not be allocated.
pub(super) fn validate_weights(m: &ModelProto, include: &Include, structural: bool) -> Result<()> {
    // Every weight is checked, including those left dense because their units are small.
    let names = weights::candidate_names(m, &Include { small: true, ..include.clone() })?;
    let g = m.graph.as_ref().context("model has no graph")?;
    let ix = GraphIndex::build(g)?;
    for name in names {
        let Some(t) = ix.weight(g, &name) else { continue };
        if structural {
            if let Some(d) = t.dims.iter().find(|&&d| d > MAX_STRUCT_WIDTH) {
                bail!("tensor '{name}': dimension {d} is wider than structural pruning supports ({MAX_STRUCT_WIDTH})");
            }
        }
        // Per-weight mode scores every candidate and rejects NaN/Inf there, naming the tensor.
        // Streamed (a copy of the biggest weight would be the structured pass's peak), each value
        // read as `read_f32` reads it.
        if structural && crate::model::tensor::is_float(t.data_type) {
            let (mut i, mut bad) = (0usize, None);
            crate::model::tensor::for_each_f64(t, |x| {
                let x = x as f32;
                if bad.is_none() && !x.is_finite() {
                    bad = Some((i, x));
                }
                i += 1;
            })
            .with_context(|| format!("tensor '{name}'"))?;
            if let Some((i, x)) = bad {
                bail!("tensor '{name}': element {i} is {x} (NaN/Inf weights cannot be pruned)");
            }
        }
    }
    Ok(())
}
