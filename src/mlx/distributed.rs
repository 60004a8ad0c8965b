//! MLX's collectives over a group of processes (`mlx::core::distributed`).
//!
//! Processes find each other the way MLX's own launcher sets them up: the ring
//! backend reads `MLX_RANK` and `MLX_HOSTFILE` (a JSON list with one list of
//! `"ip:port"` per rank), MPI its own launcher's environment. The collectives
//! are lazy ops like any other; they run, and fail, in [`super::eval`]. A peer
//! that is gone surfaces there as an error ("connection to a peer was lost"),
//! never as an abort.

use std::fmt;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use cxx::UniquePtr;

use super::error::Context;
use super::ffi::bridge as ffi;
use super::{Array, Dtype, Error, Result};

/// Which of MLX's communication backends joins the processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The first one available whose environment is set (MLX's order).
    #[default]
    Any,
    /// TCP sockets in a ring: `MLX_RANK` + `MLX_HOSTFILE`, or `mlx.launch --backend ring`.
    Ring,
    /// An MPI library found at run time (`MLX_MPI_LIBNAME`), launched by `mpirun`.
    Mpi,
    /// RDMA over Thunderbolt 5 (macOS 26.2+).
    Jaccl,
    /// NVIDIA's NCCL (CUDA builds).
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Any => "any",
            Backend::Ring => "ring",
            Backend::Mpi => "mpi",
            Backend::Jaccl => "jaccl",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether this build of MLX has the backend compiled in.
    pub fn is_available(self) -> bool {
        ffi::distributed_is_available(self.name())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Backend, String> {
        [
            Backend::Any,
            Backend::Ring,
            Backend::Mpi,
            Backend::Jaccl,
            Backend::Nccl,
        ]
        .into_iter()
        .find(|b| b.name() == s)
        .ok_or_else(|| format!("unknown distributed backend {s:?} (expected any, ring, mpi, jaccl or nccl)"))
    }
}

/// The processes that run one job together. Cheap to clone (shared).
#[derive(Clone)]
pub struct Group {
    raw: Rc<UniquePtr<ffi::Group>>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank(), self.size())
    }
}

impl Group {
    /// Joins the group this process was launched into. Fails, rather than
    /// running alone, when the backend is missing or its environment is not
    /// set, and when the other ranks have not all answered within `timeout`
    /// (a ring rank otherwise waits for a missing neighbour forever).
    pub fn init(backend: Backend, timeout: Duration) -> Result<Group> {
        let error = |message: String| Error::Invalid {
            op: "distributed init",
            message: format!(
                "{backend} backend: {message}; launch every rank with `mlx.launch`, or set MLX_RANK and \
                 MLX_HOSTFILE (ring) or run under mpirun (mpi)"
            ),
        };
        if backend != Backend::Any && !backend.is_available() {
            return Err(error(format!("this build of MLX has no {backend} backend")));
        }
        // MLX's init cannot be cancelled: it runs on a thread of its own, which
        // is left blocked (and ends with the process) when the deadline passes.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ffi::distributed_init(backend.name()).map_err(|e| e.what().to_string()));
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(raw)) => Ok(Group { raw: Rc::new(raw) }),
            Ok(Err(message)) => Err(error(message)),
            Err(_) => Err(error(format!(
                "not every rank answered within {} s (is each one started, with the same hostfile, and \
                 can they reach each other's ports?)",
                timeout.as_secs()
            ))),
        }
    }

    fn raw(&self) -> &ffi::Group {
        self.raw.as_ref().as_ref().expect("groups are never null")
    }

    pub fn rank(&self) -> i32 {
        ffi::group_rank(self.raw())
    }

    pub fn size(&self) -> i32 {
        ffi::group_size(self.raw())
    }

    /// The element-wise sum of `x` over all ranks (same shape on every rank).
    pub fn all_sum(&self, x: &Array) -> Result<Array> {
        ffi::all_sum(x.raw(), self.raw())
            .op("all_sum")
            .map(Array::from_raw)
    }

    /// Every rank's `x` concatenated along the first axis, in rank order.
    pub fn all_gather(&self, x: &Array) -> Result<Array> {
        ffi::all_gather(x.raw(), self.raw())
            .op("all_gather")
            .map(Array::from_raw)
    }

    /// Sends `x` to rank `dst`; evaluate the returned array to send.
    pub fn send(&self, x: &Array, dst: i32) -> Result<Array> {
        self.check_peer("send", dst)?;
        ffi::send(x.raw(), dst, self.raw())
            .op("send")
            .map(Array::from_raw)
    }

    /// Receives an array of the given shape and dtype from rank `src`.
    pub fn recv(&self, shape: &[i32], dtype: Dtype, src: i32) -> Result<Array> {
        self.check_peer("recv", src)?;
        ffi::recv(shape, dtype.code(), src, self.raw())
            .op("recv")
            .map(Array::from_raw)
    }

    /// Returns once every rank has called it (MLX has no barrier op: a
    /// one-element all-sum, evaluated, is one).
    pub fn barrier(&self) -> Result<()> {
        self.all_sum(&Array::scalar(1.0, Dtype::Float32)?)?.eval()
    }

    /// MLX checks peers only when the op runs; say it up front, naming both.
    fn check_peer(&self, op: &'static str, peer: i32) -> Result<()> {
        if peer == self.rank() || !(0..self.size()).contains(&peer) {
            return Err(Error::Invalid {
                op,
                message: format!(
                    "rank {} cannot exchange with rank {peer}: peers are the other ranks of 0..{}",
                    self.rank(),
                    self.size()
                ),
            });
        }
        Ok(())
    }
}
