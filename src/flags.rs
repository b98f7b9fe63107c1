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
    SparseInitializers,
    WeightInputs,
    Force,
    Html,
    /// The `plan` subcommand (Python: `plan()`).
    Plan,
}

impl Flag {
    pub const ALL: [Flag; 27] = [
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
        Flag::SparseInitializers,
        Flag::WeightInputs,
        Flag::Force,
        Flag::Html,
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
            Flag::SparseInitializers => "--sparse-initializers",
            Flag::WeightInputs => "--weight-inputs",
            Flag::Force => "--force",
            Flag::Html => "--html",
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
    /// The command line's own spelling: messages written with its flags need no [`respell`].
    fn is_cli(&self) -> bool {
        false
    }
    /// The option alone: `--calibration` (Python: `calibration`), `--no-verify` (`verify=False`).
    fn flag(&self, f: Flag) -> String;
    /// The option with the value it was given: `--guard 0.2` (Python: `guard=0.2`).
    fn with_value(&self, f: Flag, value: &str) -> String;
}

/// The command line's flags, as `onnx-emp --help` lists them.
pub struct Cli;

impl Spelling for Cli {
    fn is_cli(&self) -> bool {
        true
    }

    fn flag(&self, f: Flag) -> String {
        f.cli().to_string()
    }

    fn with_value(&self, f: Flag, value: &str) -> String {
        format!("{} {value}", f.cli())
    }
}

/// `text` (a report's note, a runtime error) with every command-line flag it names spelled as
/// `names` spells it: `--include stem` → `include='stem'`, `--no-verify` → `verify=False`,
/// `--beta above 1` → `beta above 1`. A flag is one at the start of the text or after a space,
/// bracket, quote or comma, and is a known one ([`Flag::from_cli`]); the word after it is its
/// value when `is_value` says the command line takes it for that flag. Anything else is left as is.
pub fn respell(text: &str, names: &dyn Spelling, is_value: &dyn Fn(Flag, &str) -> bool) -> String {
    if names.is_cli() || !text.contains("--") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while !rest.is_empty() {
        let at_boundary = prev.is_none_or(|c| c.is_whitespace() || "([{'\"`,;".contains(c));
        if at_boundary && rest.starts_with("--") {
            let name_len =
                2 + rest[2..].find(|c: char| !(c.is_ascii_lowercase() || c == '-')).unwrap_or(rest.len() - 2);
            if let Some(flag) = Flag::from_cli(&rest[..name_len]) {
                let after = &rest[name_len..];
                // The word after it, without the punctuation that ends a clause.
                let value = after.strip_prefix(' ').map(|w| {
                    let end = w.find(|c: char| c.is_whitespace() || ")];".contains(c)).unwrap_or(w.len());
                    w[..end].trim_end_matches(['.', ',', ':'])
                });
                match value.filter(|v| !v.is_empty() && is_value(flag, v)) {
                    Some(v) => {
                        out.push_str(&names.with_value(flag, v));
                        rest = &after[1 + v.len()..];
                    }
                    None => {
                        out.push_str(&names.flag(flag));
                        rest = after;
                    }
                }
                prev = out.chars().last();
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A front end that spells options as `<name>` and values as `<name>=value`.
    struct Angle;
    impl Spelling for Angle {
        fn flag(&self, f: Flag) -> String {
            format!("<{}>", &f.cli()[2..])
        }
        fn with_value(&self, f: Flag, value: &str) -> String {
            format!("<{}>={value}", &f.cli()[2..])
        }
    }

    #[test]
    fn respell_names_flags_and_their_values_only() {
        let numeric = |f: Flag, v: &str| f != Flag::Calibration && (v.parse::<f64>().is_ok() || v == "stem");
        let t = "kept whole (--include stem prunes it); pass --calibration with data, or --beta above 1, \
                 --round-to 1. a--beta and --bogus 2 stay; --no-verify.";
        assert_eq!(
            respell(t, &Angle, &numeric),
            "kept whole (<include>=stem prunes it); pass <calibration> with data, or <beta> above 1, \
             <round-to>=1. a--beta and --bogus 2 stay; <no-verify>."
        );
        assert_eq!(respell(t, &Cli, &numeric), t);
    }

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
