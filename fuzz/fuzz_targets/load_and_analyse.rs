//! bytes → io::parse → GraphIndex::build → prune_weights (unit, layer, normalized) and the structural
//! modes (channels, heads at β = 0.7) on clones, and the
//! checks on what comes out: the same function as `tests/fuzz_smoke.rs`.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/analyse.rs"]
mod analyse;

fuzz_target!(|data: &[u8]| {
    analyse::load_and_analyse(data);
});
