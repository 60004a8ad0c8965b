//! Runs N processes as the ranks of one MLX ring on 127.0.0.1, the way a
//! user sets them up by hand: `MLX_RANK` and `MLX_HOSTFILE` per process.

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
/// a rank that hangs is the failure these tests look for.
pub fn wait(mut child: Child, deadline: Instant, what: &str) -> Output {
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{what} still ran at the deadline (killed); stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
