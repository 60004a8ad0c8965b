//! The binding to MLX's collectives, with real processes: this test binary
//! runs itself once per rank (the ignored `rank` test, picked by
//! `SCENARIO`), as a ring on 127.0.0.1.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::ranks::{self, stderr, stdout};
use safeguard_mlx::mlx::distributed::{Backend, Group};
use safeguard_mlx::mlx::{Array, Dtype};

/// The rank side of every scenario. Prints `ok` when it got what it checked.
#[test]
#[ignore = "run by the other tests, once per rank"]
fn rank() {
    let Ok(scenario) = std::env::var("SCENARIO") else {
        return;
    };
    let timeout = std::env::var("INIT_TIMEOUT").map_or(60, |t| t.parse().unwrap());
    let group = match Group::init(Backend::Ring, Duration::from_secs(timeout)) {
        Ok(group) => group,
        Err(e) => {
            println!("init failed: {e}");
            return;
        }
    };
    let (r, n) = (group.rank(), group.size());
    match scenario.as_str() {
        "collectives" => {
            // Each rank contributes [r+1, 10(r+1), 100(r+1)].
            let mine = [1.0f32, 10.0, 100.0].map(|v| v * (r + 1) as f32);
            let x = Array::from_slice(&mine, &[3]).unwrap();
            let sum = group.all_sum(&x).unwrap().to_vec::<f32>().unwrap();
            let total = (1..=n).sum::<i32>() as f32;
            assert_eq!(sum, vec![total, 10.0 * total, 100.0 * total]);

            let gathered = group.all_gather(&x.reshape(&[1, 3]).unwrap()).unwrap();
            assert_eq!(gathered.shape(), vec![n, 3]);
            let rows = gathered.to_vec::<f32>().unwrap();
            for (i, row) in rows.chunks(3).enumerate() {
                assert_eq!(row[0], (i + 1) as f32, "all_gather row {i}");
            }

            // A ring of point-to-point messages: each rank sends its rank to
            // the next; even ranks send first so the pairs cannot deadlock.
            let next = (r + 1) % n;
            let prev = (r + n - 1) % n;
            let message = Array::from_slice(&[r, 7 * r], &[2]).unwrap();
            let received = if r % 2 == 0 {
                group.send(&message, next).unwrap().eval().unwrap();
                group.recv(&[2], Dtype::Int32, prev).unwrap()
            } else {
                let got = group.recv(&[2], Dtype::Int32, prev).unwrap();
                got.eval().unwrap();
                group.send(&message, next).unwrap().eval().unwrap();
                got
            };
            assert_eq!(received.to_vec::<i32>().unwrap(), vec![prev, 7 * prev]);

            let err = group.send(&message, r).unwrap_err().to_string();
            assert!(err.contains(&format!("cannot exchange with rank {r}")), "{err}");
            group.barrier().unwrap();
            println!("ok rank {r} of {n}");
        }
        "peer-exits" => {
            group.barrier().unwrap();
            if r == 1 {
                std::process::exit(0);
            }
            // Rank 1 is gone: the next collective must fail, not hang.
            std::thread::sleep(Duration::from_millis(300));
            let x = Array::ones(&[1024], Dtype::Float32).unwrap();
            let result = group.all_sum(&x).and_then(|s| s.eval());
            match result {
                Err(e) => println!("collective failed: {e}"),
                Ok(()) => println!("collective succeeded without its peer"),
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn rank_process(scenario: &str, hostfile: &std::path::Path, rank: usize) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--ignored", "--exact", "rank", "--nocapture", "--test-threads=1"])
        .env("SCENARIO", scenario);
    ranks::rank_command(command, hostfile, rank)
}

fn run_ranks(scenario: &str, n: usize) -> Vec<std::process::Output> {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), n);
    let commands = (0..n).map(|r| rank_process(scenario, &hostfile, r)).collect();
    ranks::run_all(commands, Duration::from_secs(60))
}

#[test]
fn ring_backend_is_built_in() {
    assert!(Backend::Ring.is_available());
}

#[test]
fn collectives_between_two_and_three_processes() {
    for n in [2, 3] {
        for (rank, output) in run_ranks("collectives", n).iter().enumerate() {
            assert!(
                stdout(output).contains(&format!("ok rank {rank} of {n}")),
                "rank {rank} of {n}:\n{}\n{}",
                stdout(output),
                stderr(output)
            );
        }
    }
}

#[test]
fn a_lost_peer_is_an_error_not_a_hang() {
    let outputs = run_ranks("peer-exits", 2);
    let out = stdout(&outputs[0]);
    assert!(
        out.contains("collective failed:"),
        "{out}\n{}",
        stderr(&outputs[0])
    );
    assert!(
        out.contains("peer"),
        "the error should say a peer was lost: {out}"
    );
}

#[test]
fn a_peer_that_never_starts_fails_init_within_the_retry_window() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = ranks::hostfile(dir.path(), 2);
    let start = Instant::now();
    let mut command = rank_process("collectives", &hostfile, 0);
    let child = command.env("INIT_TIMEOUT", "5").spawn().unwrap();
    let output = ranks::wait(child, start + Duration::from_secs(60), "rank 0 alone");
    let out = stdout(&output);
    assert!(
        out.contains("init failed: distributed init: ring backend: not every rank answered within 5 s"),
        "{out}"
    );
    assert!(
        out.contains("MLX_HOSTFILE"),
        "the error should say how to launch: {out}"
    );
}

#[test]
fn init_without_a_launcher_says_how_to_launch() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "rank", "--nocapture"])
        .env("SCENARIO", "collectives")
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE")
        .output()
        .unwrap();
    let out = stdout(&output);
    assert!(
        out.contains("init failed:") && out.contains("mlx.launch"),
        "{out}"
    );
}
