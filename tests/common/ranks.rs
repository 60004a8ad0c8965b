//! Runs N processes as the ranks of one MLX ring on 127.0.0.1, the way a
//! user sets them up by hand: `MLX_RANK` and `MLX_HOSTFILE` per process.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A hostfile for `ranks` processes on free loopback ports (one per rank).
/// The ports are free when picked; the ranks bind them moments later.
pub fn hostfile(dir: &Path, ranks: usize) -> std::path::PathBuf {
    let listeners: Vec<TcpListener> = (0..ranks)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let hosts: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| vec![format!("127.0.0.1:{}", l.local_addr().unwrap().port())])
        .collect();
    let path = dir.join("hosts.json");
    std::fs::write(&path, serde_json::to_string(&hosts).unwrap()).unwrap();
    path
}

/// `command` with the ring environment of `rank`.
pub fn rank_command(mut command: Command, hostfile: &Path, rank: usize) -> Command {
    command
        .env("MLX_RANK", rank.to_string())
        .env("MLX_HOSTFILE", hostfile)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for a process, killing it (and failing the test) past `deadline`:
/// a rank that hangs is the failure these tests look for. Its pipes are
/// drained meanwhile, so a rank that prints a lot never blocks on a full one.
pub fn wait(mut child: Child, deadline: Instant, what: &str) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                pipe.read_to_end(&mut bytes).unwrap();
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status: status.unwrap_or_else(|| child.wait().unwrap()),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if status.is_none() {
        panic!(
            "{what} still ran at the deadline (killed); stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Starts one process per command (rank order) and waits for all of them.
pub fn run_all(commands: Vec<Command>, limit: Duration) -> Vec<Output> {
    let deadline = Instant::now() + limit;
    let children: Vec<Child> = commands.into_iter().map(|mut c| c.spawn().unwrap()).collect();
    children
        .into_iter()
        .enumerate()
        .map(|(rank, child)| wait(child, deadline, &format!("rank {rank}")))
        .collect()
}

/// Sends `signal` (a name: TERM, STOP, …) to `child`.
pub fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} failed");
}

/// Pauses `peer` (its connections stay open, so only a deadline can tell
/// that it is gone) and checks that `rank0` then ends at its
/// `--step-timeout` of `secs`, within `within`.
pub fn assert_pause_ends_rank_0(rank0: Child, mut peer: Child, secs: u64, within: Duration) {
    signal(&peer, "STOP");
    let output = wait(rank0, Instant::now() + within, "rank 0 with its peer paused");
    peer.kill().unwrap();
    peer.wait().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "rank 0: no step finished in {secs} s; a peer stopped answering"
        )),
        "{err}"
    );
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
