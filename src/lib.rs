//! safeguard-mlx: OpenAI's gpt-oss-safeguard classifiers on Apple's MLX.
//!
//! Layers, bottom up (see `DESIGN.md` in the shared design notes):
//! - [`mlx`]: the binding — a thin C++ shim over MLX's C++ API and a safe `Array` API;
//! - `model/`, `engine/`, `tokenizer`: the gpt-oss port, caches, sampling and the
//!   generation loop;
//! - `harmony/`, `classify/`, `hub/`: prompts, policies and verdicts, model download;
//! - `server/` and [`cli`]: the HTTP API and the `safeguard` command.
//!
//! Each module appears here as it is built.

pub mod bench;
pub mod classify;
pub mod cli;
pub mod constrain;
pub mod distributed;
pub mod engine;
pub mod eval;
pub mod harmony;
pub mod hub;
pub mod kernels;
pub mod mlx;
pub mod model;
pub mod server;
pub mod tokenizer;
