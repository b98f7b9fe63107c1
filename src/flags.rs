//! The options a usage message names, and how each front end spells them: the command line's
//! flags (`--no-reconstruct`, `--guard 0.2`) or the Python package's keyword arguments
//! (`reconstruct=False`, `guard=0.2`). The checks ([`crate::cli`], [`crate::run::check_combination`])
//! are written once and name options through a [`Spelling`]; each front end passes its own.

/// An option a message can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Structured,
    Beta,
    Guard,
    Scope,
    Criterion,
    Include,
    RoundTo,
    NoVerify,
    NoLatency,
    LatencyBudget,
    LatencyRuns,
    LatencyIn,
    Inputs,
    Labels,
    Dim,
    Seed,
    Calibration,
    CalibrationRows,
    Ratio,
    NoReconstruct,
    AllowMismatch,
    AllowUnproven,
    /// The `plan` subcommand (Python: `plan()`).
    Plan,
}

impl Flag {
    pub const ALL: [Flag; 23] = [
        Flag::Structured,
        Flag::Beta,
        Flag::Guard,
        Flag::Scope,
        Flag::Criterion,
        Flag::Include,
        Flag::RoundTo,
        Flag::NoVerify,
        Flag::NoLatency,
        Flag::LatencyBudget,
        Flag::LatencyRuns,
        Flag::LatencyIn,
        Flag::Inputs,
        Flag::Labels,
        Flag::Dim,
        Flag::Seed,
        Flag::Calibration,
        Flag::CalibrationRows,
        Flag::Ratio,
        Flag::NoReconstruct,
        Flag::AllowMismatch,
        Flag::AllowUnproven,
        Flag::Plan,
    ];

    /// The command line's spelling (`--no-reconstruct`; `plan`).
    pub fn cli(self) -> &'static str {
        match self {
            Flag::Structured => "--structured",
            Flag::Beta => "--beta",
            Flag::Guard => "--guard",
            Flag::Scope => "--scope",
            Flag::Criterion => "--criterion",
            Flag::Include => "--include",
            Flag::RoundTo => "--round-to",
            Flag::NoVerify => "--no-verify",
            Flag::NoLatency => "--no-latency",
            Flag::LatencyBudget => "--latency-budget",
            Flag::LatencyRuns => "--latency-runs",
            Flag::LatencyIn => "--latency-in",
            Flag::Inputs => "--inputs",
            Flag::Labels => "--labels",
            Flag::Dim => "--dim",
            Flag::Seed => "--seed",
            Flag::Calibration => "--calibration",
            Flag::CalibrationRows => "--calibration-rows",
            Flag::Ratio => "--ratio",
            Flag::NoReconstruct => "--no-reconstruct",
            Flag::AllowMismatch => "--allow-mismatch",
            Flag::AllowUnproven => "--allow-unproven",
            Flag::Plan => "plan",
        }
    }

    /// The flag a command-line spelling names (`--structured`, or clap's `--structured <MODE>`).
    pub fn from_cli(s: &str) -> Option<Flag> {
        let name = s.split([' ', '=']).next().unwrap_or(s);
        Flag::ALL.into_iter().find(|f| f.cli() == name)
    }
}

/// How a front end names an option in a message.
pub trait Spelling: Sync {
    /// The option alone: `--calibration` (Python: `calibration`), `--no-verify` (`verify=False`).
    fn flag(&self, f: Flag) -> String;
    /// The option with the value it was given: `--guard 0.2` (Python: `guard=0.2`).
    fn with_value(&self, f: Flag, value: &str) -> String;
}

/// The command line's flags, as `onnx-emp --help` lists them.
pub struct Cli;

impl Spelling for Cli {
    fn flag(&self, f: Flag) -> String {
        f.cli().to_string()
    }

    fn with_value(&self, f: Flag, value: &str) -> String {
        format!("{} {value}", f.cli())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_is_found_by_its_cli_spelling() {
        for f in Flag::ALL {
            assert_eq!(Flag::from_cli(f.cli()), Some(f));
        }
        assert_eq!(Flag::from_cli("--round-to <N|auto>"), Some(Flag::RoundTo));
        assert_eq!(Flag::from_cli("--bogus"), None);
        assert_eq!(Cli.with_value(Flag::Guard, "0.2"), "--guard 0.2");
    }
}
