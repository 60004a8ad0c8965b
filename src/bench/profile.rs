//! Where a forward's time goes (`--profile`), and what the fast CPU
//! kernels cost in fidelity (`--fidelity`).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::timing::synthetic_prompt;
use crate::engine::cache::{make_caches, LayerCache};
use crate::kernels::CpuKernels;
use crate::mlx::{self, Array};
use crate::model::{GptOss, LoadOptions, Stage};

/// Where a forward's time goes (`--profile`).
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub prompt_tokens: usize,
    pub decode_steps: usize,
    /// Per stage: (name, prefill ms, decode ms per token), the stage
    /// evaluated on its own, so MLX cannot overlap it with the next.
    pub stages: Vec<(String, f64, f64)>,
    /// A plain decode step (no probes): building its graph on the host, and
    /// waiting for MLX to evaluate it, ms per token.
    pub decode_build_ms: f64,
    pub decode_eval_ms: f64,
}

/// Times each stage of a prefill of `prompt` and of `steps` decode steps by
/// evaluating after it (the head only when decoding: a prefill keeps just the
/// caches), then times plain decode steps split into graph building (host)
/// and evaluation.
pub fn profile(model: &GptOss, prompt: &[u32], steps: usize) -> Result<Profile> {
    let mut stages: Vec<(Stage, f64, f64)> = Vec::new();
    let mut timed_forward = |tokens: &[u32], caches: &mut Vec<LayerCache>, decode: bool| -> Result<u32> {
        let input = Array::from_slice(tokens, &[1, tokens.len() as i32])?;
        let mut last = Instant::now();
        let mut probe = |stage: Stage, output: &Array| -> crate::model::Result<()> {
            // Prefill never evaluates the head: only the caches are kept.
            if stage == Stage::Head && !decode {
                return Ok(());
            }
            output.eval()?;
            let ms = last.elapsed().as_secs_f64() * 1e3;
            match stages.iter_mut().find(|(s, _, _)| *s == stage) {
                Some(entry) if decode => entry.2 += ms,
                Some(entry) => entry.1 += ms,
                None => stages.push((
                    stage,
                    if decode { 0.0 } else { ms },
                    if decode { ms } else { 0.0 },
                )),
            }
            last = Instant::now();
            Ok(())
        };
        let logits = model.forward_probed(&input, &mut [caches.as_mut_slice()], &mut probe)?;
        let last = logits.dim(1)? - 1;
        Ok(logits
            .slice_axis(1, last, last + 1)?
            .argmax(-1, false)?
            .reshape(&[1])?
            .item::<u32>()?)
        // (After a prefill this evaluates the last position's head, untimed.)
    };
    let mut caches = make_caches(model);
    let mut token = timed_forward(prompt, &mut caches, false)?;
    for _ in 0..steps {
        token = timed_forward(&[token], &mut caches, true)?;
    }
    let (mut build, mut eval) = (0.0, 0.0);
    for _ in 0..steps {
        let start = Instant::now();
        let logits = model.forward(&Array::from_slice(&[token], &[1, 1])?, &mut caches)?;
        let next = logits.argmax(-1, false)?.reshape(&[1])?;
        let built = Instant::now();
        token = next.item::<u32>()?;
        build += (built - start).as_secs_f64() * 1e3;
        eval += built.elapsed().as_secs_f64() * 1e3;
    }
    let per_step = steps.max(1) as f64;
    Ok(Profile {
        prompt_tokens: prompt.len(),
        decode_steps: steps,
        stages: stages
            .into_iter()
            .map(|(stage, prefill, decode)| (format!("{stage:?}").to_lowercase(), prefill, decode / per_step))
            .collect(),
        decode_build_ms: build / per_step,
        decode_eval_ms: eval / per_step,
    })
}

/// How far the `fast` CPU kernels (int8 activations) move a model's
/// next-token distributions from the `exact` ones, over the positions of one
/// synthetic prompt: reported, not assumed (`--fidelity`).
#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    pub positions: usize,
    /// Share of positions whose most likely token is the same.
    pub top1_agreement: f64,
    /// KL(exact ‖ fast) in nats, mean and worst over the positions.
    pub mean_kl: f64,
    pub max_kl: f64,
}

pub fn kernel_fidelity(dir: &Path, load: LoadOptions, positions: usize) -> Result<Fidelity> {
    let log_probs = |cpu_kernels| -> Result<Array> {
        let model = GptOss::load(dir, LoadOptions { cpu_kernels, ..load })?;
        let prompt = synthetic_prompt(positions.max(1), model.config.vocab_size as u32, 17);
        let tokens = Array::from_slice(&prompt, &[1, prompt.len() as i32])?;
        let logits = model.forward(&tokens, &mut make_caches(&model))?;
        let out = logits.reshape(&[prompt.len() as i32, -1])?.log_softmax(-1)?;
        mlx::eval(&[&out])?;
        Ok(out)
    };
    let exact = log_probs(CpuKernels::Exact)?;
    let fast = log_probs(CpuKernels::Fast)?;
    let kl = exact
        .exp()?
        .multiply(&exact.subtract(&fast)?)?
        .sum(&[-1], false)?;
    let top1 = |a: &Array| -> Result<Vec<u32>> { Ok(a.argmax(-1, false)?.to_vec::<u32>()?) };
    let agree = top1(&exact)?
        .iter()
        .zip(top1(&fast)?)
        .filter(|(a, b)| **a == *b)
        .count();
    let kl = kl.to_vec::<f32>()?;
    Ok(Fidelity {
        positions: kl.len(),
        top1_agreement: agree as f64 / kl.len() as f64,
        mean_kl: kl.iter().map(|&v| f64::from(v)).sum::<f64>() / kl.len() as f64,
        max_kl: kl.iter().fold(0.0f64, |m, &v| m.max(f64::from(v))),
    })
}
