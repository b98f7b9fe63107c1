//! The command line as a library: parse flags, call [`crate::run`], write the report files.
//! The `onnx-emp` binary ([`main`]) and the Python package (`run_to_json`) both go through here,
//! so flags, defaults and one-line error messages are the same everywhere.
//! Exit codes: 0 success, 1 error (one line naming the file/node/tensor), 2 bad usage.

use crate::check::{InputSpec, VerifyOptions};
use crate::flags::{Flag, Spelling};
use crate::prune::RoundTo;
use crate::run::{self, CriterionArg, IncludeArg, LatencyIn, Mode, RunOptions, ScopeArg, WeightInputs};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
  # per-weight EMP (default), reconstructed from a calibration split, verified on the test set
  onnx-emp models/fmnist_mobilenet.onnx mobilenet.pruned.onnx --calibration models/fmnist_calib_x.npy \\
      --inputs models/fmnist_test_x.npy --labels models/fmnist_test_y.npy

  # one EMP group per output unit (row/filter), a JSON report, no verification
  onnx-emp model.onnx out.onnx --scope unit --report report.json --no-verify

  # remove conv channels / hidden units (kept counts aligned: --round-to auto), then refit
  onnx-emp models/fmnist_resnet.onnx resnet.small.onnx --structured channels --beta 0.8 \\
      --calibration models/fmnist_calib_x.npy --inputs models/fmnist_test_x.npy

  # remove attention heads (one EMP over all heads), then FFN hidden units
  onnx-emp bert.onnx bert.small.onnx --structured heads,channels --dim batch=1 --dim sequence=128

  # data-driven scores from a calibration set: Wanda |w|·‖x‖ per weight, activations per channel
  onnx-emp models/digits_mlp.onnx mlp.wanda.onnx --criterion wanda \
      --calibration models/digits_calib_x64.npy --inputs models/digits_test_x64.npy
  onnx-emp models/digits_cnn.onnx cnn.act.onnx --structured channels --criterion activation \
      --calibration models/digits_calib_x1x8x8.npy

  # the decision only (groups, N_eff, kept, params, MACs): no model written, nothing verified
  onnx-emp plan models/fmnist_resnet.onnx --structured channels --beta 0.8

  # compare two models' graphs
  onnx-emp diff model.onnx out.onnx";

#[derive(Parser, Debug)]
#[command(
    name = "onnx-emp",
    version,
    about = "Prune ONNX models with Effective Model Pruning (EMP): keep ⌊β·N_eff⌋ units per group, N_eff = 1/Σω²",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    prune: PruneArgs,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Readable, deterministic graph diff of two models (shapes, attributes, nodes, params).
    Diff { a: PathBuf, b: PathBuf },
    /// The decision only: groups, N_eff, kept, blocked reasons, expected params and MACs. Takes
    /// the same flags as a run but the latency ones (it times nothing); writes no model, runs no
    /// reconstruction or verification.
    Plan(PruneArgs),
}

#[derive(clap::Args, Debug)]
struct PruneArgs {
    /// Input model (.onnx)
    input: Option<PathBuf>,
    /// Output model (.onnx); written atomically, never over the input unless --force
    output: Option<PathBuf>,
    /// Structural mode (default: per-weight zeroing)
    #[arg(long, value_name = "MODE")]
    structured: Option<Mode>,
    /// β: keep ⌊β·N_eff⌋ units per group (β > 0; default 1 = the paper's rule). Given, it is
    /// written as is: the fidelity guard only moves the default
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f64>,
    /// Default runs without reconstruction (per-weight and structured): when EMP's cut moves the
    /// model's outputs by more than this relative L2 error (of the worst float output, over the
    /// samples) on seeded random inputs (32, fewer on models over 67 M MACs per sample; the
    /// calibration rows when given with --no-reconstruct), raise β until it does not, and say so
    /// in the report; off writes EMP's cut unchecked (default 0.1). Not run with --no-verify or
    /// plan; a tolerance beside --beta or --ratio, whose cut is written as asked, on plan, or with
    /// --no-verify (unless reconstruction runs: it bounds the warning on its cut) is a usage error
    #[arg(long, value_name = "REL|off", value_parser = parse_guard, allow_negative_numbers = true)]
    guard: Option<GuardArg>,
    /// Grouping. Per-weight: normalized (default; global over per-tensor-normalised scores),
    /// global, layer or unit (default for wanda). Structured: layer (default for channels) or
    /// global (default for heads)
    #[arg(long, value_enum, hide_possible_values = true)]
    scope: Option<ScopeArg>,
    /// Score: magnitude (default) or wanda (per-weight, needs --calibration);
    /// l2 (default), l1 or activation (channels); weight (default) or activation (heads)
    #[arg(long, value_enum, hide_possible_values = true)]
    criterion: Option<CriterionArg>,
    /// Also prune what the safe defaults leave alone (comma separated, repeatable). Per-weight: bias, norm,
    /// embedding, small (weights whose output units have fewer than 32 inputs: depthwise filters,
    /// a stem on 1-3 channels, LSTM gates on few features). Channels: narrow (lift the floor of
    /// half of every group and at least 8 units), stem (prune a Conv that reads the model input),
    /// bottleneck (in a network with depthwise convolutions, prune the bottlenecks between them)
    #[arg(long, value_name = "ITEM,...")]
    include: Vec<String>,
    /// Structured: round each kept count up to a multiple of N, never above the original width.
    /// auto (default) keeps the alignment the dense width has, up to 8 (what blocked engine
    /// kernels need; 16 for LSTM/GRU/RNN hidden units, 64 for the outputs of a Gemm or 2-D
    /// MatMul, which run as matrix-vector products at batch 1), and aligns convolution and
    /// sequence-MatMul groups of 32 units or more whose width is a multiple of 16 to the nearest
    /// multiple of 16 (at most 8 units from EMP's count either way); 1 turns rounding off
    #[arg(long, value_name = "N|auto")]
    round_to: Option<RoundTo>,
    /// Weights listed as graph inputs too (IR < 4 exports, keep_initializers_as_inputs=True):
    /// constant (default) prunes them as weights and declares the pruned shapes; input treats
    /// them as run-time inputs and prunes nothing that reads them
    #[arg(long, value_enum, default_value = "constant", value_name = "constant|input")]
    weight_inputs: WeightInputs,
    /// Write the report as JSON here
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the report as one self-contained HTML page here (inline SVG, no external resources)
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Run no tract at all: no fidelity, latency or MACs check, and no masked-equivalence proof
    /// of a structural rewrite (the report marks the rewrite unproven)
    #[arg(long)]
    no_verify: bool,
    /// Verify outputs but skip the latency measurement (tract's and onnxruntime's)
    #[arg(long)]
    no_latency: bool,
    /// Time each model for about this many seconds in each engine (at least one run; default 2)
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    latency_budget: Option<f64>,
    /// Time exactly N runs per model instead of a time budget
    #[arg(long, value_name = "N")]
    latency_runs: Option<usize>,
    /// Time latency in one engine only: tract, or onnxruntime (default: both, onnxruntime where
    /// Python has it)
    #[arg(long, value_enum, value_name = "ENGINE")]
    latency_in: Option<LatencyIn>,
    /// Verification inputs: NAME=FILE.npy (repeatable), FILE.npy for a single-input model, or FILE.npz
    #[arg(long, value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Class labels (.npy: integers, whole-number floats or one-hot rows) for accuracy before/after,
    /// on the first output they fit, or OUTPUT=FILE for that output
    #[arg(long, value_name = "[OUTPUT=]FILE")]
    labels: Option<String>,
    /// Fix a dynamic dimension for verification: NAME=VALUE (repeatable), e.g. batch=1
    #[arg(long, value_name = "NAME=VALUE")]
    dim: Vec<String>,
    /// Seed of the random verification inputs
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Calibration data for data-driven criteria: FILE.npy (single input), FILE.npz, DIR of
    /// NAME.npy files, or NAME=FILE.npy (repeatable). Required by wanda and activation
    #[arg(long, value_name = "PATH")]
    calibration: Vec<String>,
    /// Use at most N calibration samples: a larger file is subsampled evenly (every k-th
    /// sample, in file order), since reconstruction's time grows with them and its fidelity
    /// stops improving long before; 0 uses every sample (default 512; only with --calibration)
    #[arg(long, value_name = "N")]
    calibration_rows: Option<usize>,
    /// Baseline for comparisons (per-weight): prune this fixed fraction of every group instead
    /// of EMP's ⌊β·N_eff⌋, e.g. --ratio 0.5
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    ratio: Option<f64>,
    /// Do not reconstruct the kept weights from --calibration (reconstruction runs whenever
    /// calibration data is given)
    #[arg(long)]
    no_reconstruct: bool,
    /// Store pruned weights as ONNX sparse_initializer (values + indices) wherever that saves
    /// bytes, so the file shrinks with sparsity. onnxruntime loads it; tract cannot (verification
    /// runs on the dense-stored model first)
    #[arg(long)]
    sparse_initializers: bool,
    /// Allow overwriting the input file
    #[arg(long)]
    force: bool,
    /// Write the output even when masked-equivalence fails (structured modes; not with --no-verify)
    #[arg(long)]
    allow_mismatch: bool,
    /// Write a structural rewrite even when neither tract nor onnxruntime can run the models to
    /// prove it (refused by default: the report then marks it unproven)
    #[arg(long)]
    allow_unproven: bool,
    /// Print nothing but errors: no report on stdout (the JSON report is still written) and no
    /// progress on stderr
    #[arg(long, short)]
    quiet: bool,
}

/// `--guard`: a tolerance on the outputs' relative L2 error, or off (None).
#[derive(Clone, Copy, Debug)]
struct GuardArg(Option<f64>);

impl std::fmt::Display for GuardArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(t) => write!(f, "{t}"),
            None => f.write_str("off"),
        }
    }
}

fn parse_guard(s: &str) -> Result<GuardArg, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(GuardArg(None));
    }
    match s.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(GuardArg(Some(t))),
        _ => Err(format!("expected a relative error ≥ 0 (e.g. 0.1) or off, got '{s}'")),
    }
}

/// `--include`'s comma-separated items (the flag repeatable): an empty item (`bias,`) or an
/// unknown one is named, with the valid values.
fn parse_include(given: &[String], names: &dyn Spelling) -> Result<Vec<IncludeArg>, Failure> {
    use clap::ValueEnum;
    let valid = || IncludeArg::value_variants().iter().map(run::arg_name).collect::<Vec<_>>().join(", ");
    let mut out = vec![];
    for g in given {
        for item in g.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(usage(&format!(
                    "{}: an empty item (a leading, trailing or doubled comma); the items are {}, separated by \
                     commas",
                    names.with_value(Flag::Include, &format!("'{g}'")),
                    valid()
                )));
            }
            match IncludeArg::from_str(item, false) {
                Ok(i) => out.push(i),
                Err(_) => {
                    return Err(usage(&format!(
                        "{}: expected one of {}",
                        names.with_value(Flag::Include, item),
                        valid()
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// Why a command failed: exit code (1 error, 2 bad usage) and the one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn usage(msg: &str) -> Failure {
    Failure { code: 2, message: msg.to_string() }
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure { code: 1, message: one_line(&e.to_string()) }
}

/// What a successful command produced.
pub enum Done {
    /// A pruning run or a plan.
    Report(Box<crate::report::Report>),
    /// `diff`: the text to print.
    Text(String),
}

/// The `onnx-emp` binary: parse `args` (program name first), run, print, set the exit code.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let quiet = cli.prune.quiet || matches!(&cli.cmd, Some(Cmd::Plan(a)) if a.quiet);
    match guard(|| execute(cli, &crate::flags::Cli)) {
        Ok(Done::Text(s)) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Ok(Done::Report(r)) => {
            if !quiet {
                print!("{}", r.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(f) if f.code == 2 => {
            eprintln!("error: {}\n\nFor more information, try '--help'.", f.message);
            ExitCode::from(2)
        }
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Run a command line (program name first) without printing anything and return the JSON
/// report (or `diff`'s text). `--help` and `--version` are failures with code 0 and the text
/// as message. Messages name the command line's flags.
pub fn run_to_json(args: Vec<String>) -> Result<String, Failure> {
    run_to_json_as(args, &crate::flags::Cli)
}

/// [`run_to_json`] for a front end that names the options its own way (the Python package:
/// `reconstruct=False`, not `--no-reconstruct`): its usage messages, and clap's for a value the
/// parser refused, name options through `names`.
pub fn run_to_json_as(args: Vec<String>, names: &dyn Spelling) -> Result<String, Failure> {
    let mut cli = Cli::try_parse_from(args).map_err(|e| parse_failure(&e, names))?;
    cli.prune.quiet = true;
    if let Some(Cmd::Plan(a)) = &mut cli.cmd {
        a.quiet = true;
    }
    let respell = |t: &str| crate::flags::respell(t, names, &takes_value);
    match guard(|| execute(cli, names)) {
        Ok(Done::Report(r)) if names.is_cli() => Ok(r.to_json()),
        // The report's notes and warnings name the command line's flags: a front end reads its own.
        Ok(Done::Report(r)) => match r.to_value() {
            Ok(mut v) => {
                respell_strings(&mut v, &respell);
                Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
            }
            Err(_) => Ok(r.to_json()),
        },
        Ok(Done::Text(s)) => Ok(s),
        Err(f) => Err(Failure { message: respell(&f.message), ..f }),
    }
}

/// Every string in a JSON value (not the keys) through `f`.
fn respell_strings(v: &mut serde_json::Value, f: &dyn Fn(&str) -> String) {
    match v {
        serde_json::Value::String(s) => *s = f(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| respell_strings(x, f)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| respell_strings(x, f)),
        _ => {}
    }
}

/// Whether the command line takes `word` as `flag`'s value (`--include stem`, `--guard off`,
/// `--round-to 1`), as opposed to the word after a flag a message names alone (`--beta above 1`,
/// `--calibration with a few hundred inputs`): what clap's parser for it accepts; a data file
/// ends in .npy or .npz.
fn takes_value(flag: Flag, word: &str) -> bool {
    use clap::ValueEnum;
    let number = word.parse::<f64>().is_ok_and(f64::is_finite);
    match flag {
        Flag::Beta | Flag::Ratio | Flag::LatencyBudget | Flag::LatencyRuns | Flag::CalibrationRows | Flag::Seed => {
            number
        }
        Flag::Guard => parse_guard(word).is_ok(),
        Flag::RoundTo => word.parse::<RoundTo>().is_ok(),
        Flag::Include => word.split(',').all(|i| IncludeArg::from_str(i, false).is_ok()),
        Flag::Structured => Mode::from_str(word, false).is_ok(),
        Flag::Scope => ScopeArg::from_str(word, false).is_ok(),
        Flag::Criterion => CriterionArg::from_str(word, false).is_ok(),
        Flag::LatencyIn => LatencyIn::from_str(word, false).is_ok(),
        Flag::Dim => word.contains('=') && !word.starts_with('='),
        Flag::WeightInputs => WeightInputs::from_str(word, false).is_ok(),
        Flag::Html => word.ends_with(".html"),
        Flag::Inputs | Flag::Labels | Flag::Calibration => word.ends_with(".npy") || word.ends_with(".npz"),
        _ => false,
    }
}

/// clap's error as one line: its first, or for a value it refused, the option as `names` spell
/// it with the value and the reason (`--round-to 0: ...`, Python `round_to=0: ...`).
fn parse_failure(e: &clap::Error, names: &dyn Spelling) -> Failure {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let first = e.render().to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
    let text = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = text(ContextKind::InvalidArg).and_then(|a| Flag::from_cli(&a));
    let message = match (e.kind(), flag, text(ContextKind::InvalidValue)) {
        (ErrorKind::InvalidValue, Some(flag), Some(v)) if !v.is_empty() => {
            let valid = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => format!(": expected one of {}", v.join(", ")),
                _ => String::new(),
            };
            format!("{}{valid}", names.with_value(flag, &v))
        }
        (ErrorKind::ValueValidation, Some(flag), Some(v)) => match std::error::Error::source(e) {
            Some(why) => format!("{}: {}", names.with_value(flag, &v), one_line(&why.to_string())),
            None => first,
        },
        _ => first,
    };
    Failure { code: if e.use_stderr() { 2 } else { 0 }, message }
}

/// Last line of defence: a panic anywhere becomes a one-line error with exit code 1.
fn guard(f: impl FnOnce() -> Result<Done, Failure>) -> Result<Done, Failure> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    crate::check::ort::shutdown();
    std::panic::set_hook(prev);
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Failure { code: 1, message: format!("internal error (please report): {msg}") })
        }
    }
}

fn execute(cli: Cli, names: &dyn Spelling) -> Result<Done, Failure> {
    if let Some(Cmd::Diff { a, b }) = cli.cmd {
        return crate::diff::diff_files(&a, &b).map(Done::Text).map_err(|e| failed(format!("{e:#}")));
    }
    let (a, plan) = match cli.cmd {
        Some(Cmd::Plan(a)) => (a, true),
        _ => (cli.prune, false),
    };
    crate::progress::set_quiet(a.quiet);
    let (input, output) = match (a.input.clone(), a.output.clone(), plan) {
        (Some(i), None, true) => (i, PathBuf::new()),
        (Some(_), Some(o), true) => {
            return Err(usage(&format!("plan writes no model: unexpected '{}'", o.display())));
        }
        (Some(i), Some(o), false) => (i, o),
        (_, _, true) => return Err(usage("expected IN (see 'onnx-emp plan --help')")),
        _ => return Err(usage("expected IN and OUT model paths (see --help)")),
    };
    let mode = a.structured.unwrap_or(Mode::Weights);
    let beta = a.beta.unwrap_or(1.0);
    // Options are named as the front end spells them (the flags here, keywords in Python).
    let f = |flag: Flag| names.flag(flag);
    let fv = |flag: Flag, v: &dyn std::fmt::Display| names.with_value(flag, &v.to_string());
    if !(beta.is_finite() && beta > 0.0) {
        return Err(usage(&format!("{}: must be a finite number > 0", fv(Flag::Beta, &beta))));
    }
    if let Some(r) = a.ratio {
        if !(r.is_finite() && (0.0..1.0).contains(&r)) {
            return Err(usage(&format!("{}: must be in [0, 1)", fv(Flag::Ratio, &r))));
        }
    }
    run::check_combination(mode, a.scope, a.criterion, a.ratio, a.beta.is_some(), names).map_err(|e| usage(&e))?;
    // The guard only moves the default β: a tolerance beside a cut written as asked did nothing.
    if let Some(GuardArg(Some(t))) = a.guard {
        let given = if a.beta.is_some() { Some(Flag::Beta) } else { a.ratio.map(|_| Flag::Ratio) };
        if let Some(flag) = given {
            let flag = f(flag);
            return Err(usage(&format!(
                "{} has no effect with {flag}: its cut is written as asked (the guard only moves the \
                 default β; drop {flag} to let it choose)",
                fv(Flag::Guard, &t)
            )));
        }
    }
    // Flags that would do nothing in this run are refused, not ignored.
    let no_effect = |flag: &str, why: &str| usage(&format!("{flag} has no effect {why}"));
    // Alignment and the floors are channels' (a head is removed whole).
    let structural = match mode {
        Mode::Weights => Some("per weight".to_string()),
        Mode::Heads => Some(format!("with {}", fv(Flag::Structured, &"heads"))),
        _ => None,
    };
    let channels = fv(Flag::Structured, &"channels");
    if let (Some(how), true) = (&structural, a.round_to.is_some()) {
        return Err(no_effect(&f(Flag::RoundTo), &format!("{how}: it aligns the widths {channels} keeps")));
    }
    let includes = parse_include(&a.include, names)?;
    for i in &includes {
        let name = fv(Flag::Include, &run::arg_name(i));
        let per_weight = matches!(i, IncludeArg::Bias | IncludeArg::Norm | IncludeArg::Embedding | IncludeArg::Small);
        if let (Some(how), false) = (&structural, per_weight) {
            return Err(no_effect(&name, &format!("{how}: it lifts a floor of {channels}")));
        }
        if mode != Mode::Weights && per_weight {
            let structured = f(Flag::Structured);
            return Err(no_effect(
                &name,
                &format!("with {structured}: it adds per-weight candidates (without {structured})"),
            ));
        }
    }
    let latency_flags = [
        (a.latency_budget.is_some(), Flag::LatencyBudget),
        (a.latency_runs.is_some(), Flag::LatencyRuns),
        (a.latency_in.is_some(), Flag::LatencyIn),
    ];
    // `plan` times nothing (it stops after the decision): its latency flags did nothing.
    if plan {
        for (given, flag) in [(a.no_latency, Flag::NoLatency)].into_iter().chain(latency_flags) {
            if given {
                return Err(no_effect(&f(flag), &format!("with {}: plan times nothing", f(Flag::Plan))));
            }
        }
    }
    if a.no_latency || a.no_verify {
        let off = f(if a.no_verify { Flag::NoVerify } else { Flag::NoLatency });
        for (given, flag) in latency_flags {
            if given {
                return Err(no_effect(&f(flag), &format!("with {off}: nothing is timed")));
            }
        }
    }
    if let (Some(_), Some(n)) = (a.latency_budget, a.latency_runs) {
        return Err(no_effect(
            &f(Flag::LatencyBudget),
            &format!("with {}: exactly {n} runs are timed", f(Flag::LatencyRuns)),
        ));
    }
    let calibration = f(Flag::Calibration);
    if a.no_reconstruct && a.calibration.is_empty() {
        return Err(no_effect(
            &f(Flag::NoReconstruct),
            &format!("without {calibration}: only calibration data is reconstructed from"),
        ));
    }
    if a.calibration_rows.is_some() && a.calibration.is_empty() {
        return Err(no_effect(
            &f(Flag::CalibrationRows),
            &format!("without {calibration}: it caps the calibration samples used"),
        ));
    }
    // What a proof or a verification run reads, where none runs: `plan` (it stops after the
    // decision), --no-verify, and per weight (it removes nothing: no masked model to prove).
    let unproven = if plan {
        Some(format!("with {}: plan proves nothing", f(Flag::Plan)))
    } else if a.no_verify {
        Some(format!("with {}: no masked-equivalence proof runs", f(Flag::NoVerify)))
    } else if mode == Mode::Weights {
        Some("per weight: it removes nothing, so there is no masked-equivalence proof".to_string())
    } else {
        None
    };
    for (given, flag) in [(a.allow_mismatch, Flag::AllowMismatch), (a.allow_unproven, Flag::AllowUnproven)] {
        if let (true, Some(why)) = (given, &unproven) {
            return Err(no_effect(&f(flag), why));
        }
    }
    if a.labels.is_some() && plan {
        return Err(no_effect(&f(Flag::Labels), &format!("with {}: plan measures nothing", f(Flag::Plan))));
    }
    // The guard judges on a verification run; with --no-verify its tolerance still bounds the
    // warning on a reconstructed cut (`calibrated_warning`), and `off` silences that warning.
    if let Some(GuardArg(Some(t))) = a.guard {
        if plan {
            return Err(no_effect(
                &fv(Flag::Guard, &t),
                &format!("with {}: plan runs no fidelity guard", f(Flag::Plan)),
            ));
        }
        if a.no_verify && (a.calibration.is_empty() || a.no_reconstruct) {
            return Err(no_effect(
                &fv(Flag::Guard, &t),
                &format!("with {}: the fidelity guard needs the verification run", f(Flag::NoVerify)),
            ));
        }
    }
    let (include, floor) = run::includes(&includes);
    if let Some(b) = a.latency_budget {
        if !(b.is_finite() && b > 0.0 && b < 1e6) {
            return Err(usage(&format!("{}: must be a number of seconds > 0", fv(Flag::LatencyBudget, &b))));
        }
    }
    if a.latency_runs == Some(0) {
        return Err(usage(&format!(
            "{}: must be at least 1 ({} skips timing)",
            fv(Flag::LatencyRuns, &0),
            f(Flag::NoLatency)
        )));
    }
    let mut dims = BTreeMap::new();
    for d in &a.dim {
        let Some((k, v)) = d.split_once('=') else {
            return Err(usage(&format!("{}: expected NAME=VALUE", fv(Flag::Dim, d))));
        };
        match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => {
                dims.insert(k.trim().to_string(), n);
            }
            _ => return Err(usage(&format!("{}: VALUE must be a positive integer", fv(Flag::Dim, d)))),
        }
    }
    let mut files = BTreeMap::new();
    let mut npz = None;
    for i in &a.inputs {
        // One file per input: a second one for the same input was used silently instead.
        let (name, twice) = match i.split_once('=') {
            Some((k, v)) => (k, files.insert(k.to_string(), PathBuf::from(v)).is_some()),
            None if i.ends_with(".npz") => ("(.npz)", npz.replace(PathBuf::from(i)).is_some()),
            None => ("(the model's input)", files.insert(String::new(), PathBuf::from(i)).is_some()),
        };
        if twice {
            return Err(usage(&format!("{}: {name} is given a file twice", fv(Flag::Inputs, i))));
        }
    }
    let (calibration, calibration_label) = if a.calibration.is_empty() {
        (None, None)
    } else {
        let mut spec = InputSpec { dims: dims.clone(), seed: a.seed, ..Default::default() };
        for c in &a.calibration {
            let p = PathBuf::from(c);
            if let Some((k, v)) = c.split_once('=') {
                spec.files.insert(k.to_string(), PathBuf::from(v));
            } else if p.is_dir() {
                let Ok(rd) = std::fs::read_dir(&p) else {
                    return Err(usage(&format!("{}: cannot read folder", fv(Flag::Calibration, c))));
                };
                let mut found: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|e| e == "npy"))
                    .collect();
                found.sort();
                for f in found {
                    let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    spec.files.insert(stem, f);
                }
            } else if c.ends_with(".npz") {
                spec.npz = Some(p);
            } else {
                spec.files.insert(String::new(), p);
            }
        }
        (Some(spec), Some(a.calibration.join(",")))
    };
    // `--labels OUTPUT=FILE`, unless the whole argument is a file (a name with '=' in it).
    let (labels_output, labels_file) = match a.labels.as_deref() {
        None => (None, None),
        Some(l) => match l.split_once('=') {
            Some((o, f)) if !std::path::Path::new(l).exists() && !o.is_empty() => {
                (Some(o.to_string()), Some(PathBuf::from(f)))
            }
            _ => (None, Some(PathBuf::from(l))),
        },
    };
    let verify_opts = VerifyOptions {
        inputs: InputSpec { dims, files, npz, seed: a.seed, ..Default::default() },
        labels: labels_file.clone(),
        labels_output: labels_output.clone(),
        latency: !a.no_latency,
        latency_opts: crate::check::LatencyOptions {
            budget: a.latency_budget.map(std::time::Duration::from_secs_f64),
            runs: a.latency_runs,
            only: a.latency_in.map(Into::into),
        },
        samples: None,
    };
    let opts = RunOptions {
        input,
        output,
        force: a.force,
        mode,
        beta,
        beta_given: a.beta.is_some(),
        guard: a.guard.map_or(Some(crate::check::guard::DEFAULT_TOLERANCE), |g| g.0),
        guard_on_inputs: false,
        scope: a.scope,
        criterion: a.criterion,
        include,
        floor,
        round_to: a.round_to.unwrap_or(RoundTo::Auto),
        verify: !a.no_verify,
        verify_opts,
        allow_mismatch: a.allow_mismatch,
        allow_unproven: a.allow_unproven,
        calibration,
        calibration_label,
        calibration_rows: a.calibration_rows.unwrap_or(crate::run::DEFAULT_CALIBRATION_ROWS),
        fixed_ratio: a.ratio,
        reconstruct: !a.no_reconstruct,
        plan,
        sparse_initializers: a.sparse_initializers,
        weight_inputs: a.weight_inputs,
    };
    let side: Vec<(&str, &std::path::Path)> = [("--report", &a.report), ("--html", &a.html)]
        .into_iter()
        .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
        .collect();
    run::check_side_outputs(&opts, &side).map_err(|e| failed(format!("{e:#}")))?;
    let out = run::run(&opts).map_err(|e| failed(format!("{e:#}")))?;
    // A report that cannot be written (a full disk) fails the run, and an error leaves no output
    // behind: the model just written is removed again (not with --force, where OUT may be IN).
    let side_output = |flag: &str, p: &std::path::Path, bytes: &[u8]| -> Result<(), Failure> {
        crate::model::io::write_atomic(p, bytes).map_err(|e| {
            let removed = !opts.plan && !opts.force && std::fs::remove_file(&opts.output).is_ok();
            let what = if removed { format!("; {} was removed", opts.output.display()) } else { String::new() };
            failed(format!("{flag} {e:#}{what}"))
        })
    };
    if let Some(p) = &a.report {
        side_output("--report", p, out.report.to_json().as_bytes())?;
    }
    if let Some(p) = &a.html {
        side_output("--html", p, crate::html::render(&out.report).as_bytes())?;
    }
    Ok(Done::Report(Box::new(out.report)))
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}
