//! How a model is divided among ranks: which tensors split along which axis,
//! checked for the whole model before anything is sliced, then each rank's
//! slice taken from the loaded (still lazy) tensors.
//!
//! Tensor parallel is mlx-lm's `shard` for gpt_oss: q/k/v rows and the sinks
//! by heads (kv heads whole per rank), o_proj by input columns; expert gate/up
//! by the intermediate rows, down by its input columns, its bias on rank 0
//! only (the sum adds it once). Expert parallel keeps every expert whole and
//! gives each rank a range of them; attention splits by heads when the kv
//! heads divide, and is run whole on every rank otherwise. Router, norms,
//! embedding and lm_head are on every rank. Quantized tensors (packed
//! weights, scales, affine biases) split along the same axes as the matrix.

use std::fmt;
use std::ops::Range;

use super::{Error, Parallel, Result};
use crate::mlx::Array;
use crate::model::{Config, Weights};

/// Rank counts tried when saying which would work.
const MAX_RANKS: i32 = 128;

/// What each rank of a split model holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub parallel: Parallel,
    pub ranks: i32,
    pub split_heads: bool,
    pub split_intermediate: bool,
    heads: i32,
    kv_heads: i32,
    intermediate: i32,
    experts: i32,
    layers: usize,
}

/// One constraint a split must meet: a dimension of a tensor cut into equal
/// parts, each a whole number of `unit`s.
struct Cut {
    tensor: String,
    what: String,
    size: i32,
    unit: i32,
}

impl Cut {
    fn allows(&self, ranks: i32) -> bool {
        self.size % (ranks * self.unit) == 0
    }
}

impl Split {
    /// Decides the split of `config`'s model (its tensors in `weights`, in
    /// mlx-lm's layout) over `ranks`, or says which tensor forbids it and
    /// which rank counts would work.
    pub fn plan(config: &Config, weights: &Weights, parallel: Parallel, ranks: i32) -> Result<Split> {
        let cuts = cuts(config, weights, parallel)?;
        let experts = config.num_local_experts;
        let refuse = |tensor: &str, why: String| {
            let working: Vec<i32> = (2..=MAX_RANKS)
                .filter(|&n| {
                    cuts.iter().all(|c| c.allows(n)) && (parallel != Parallel::Expert || n <= experts)
                })
                .collect();
            Err(Error::Split {
                parallel,
                ranks,
                tensor: tensor.to_string(),
                why,
                working: describe_counts(&working, parallel),
            })
        };
        if ranks < 1 {
            return refuse("(the group)", format!("{ranks} ranks"));
        }
        if parallel == Parallel::Expert && ranks > experts {
            return refuse(
                "model.layers.0.mlp.router.weight",
                format!("{experts} experts cannot give each of {ranks} ranks at least one"),
            );
        }
        let split_heads = match parallel {
            Parallel::Tensor => {
                if let Some(cut) = cuts.iter().find(|c| !c.allows(ranks)) {
                    return refuse(
                        &cut.tensor,
                        format!(
                            "its {} {} do not divide into {ranks} equal parts{}",
                            cut.size / cut.unit,
                            cut.what,
                            if cut.unit > 1 {
                                format!(" (quantization groups of {} inputs stay whole)", cut.unit)
                            } else {
                                String::new()
                            }
                        ),
                    );
                }
                true
            }
            Parallel::Expert => cuts.iter().all(|c| c.allows(ranks)),
        };
        Ok(Split {
            parallel,
            ranks,
            split_heads: split_heads && ranks > 1,
            split_intermediate: parallel == Parallel::Tensor && ranks > 1,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            intermediate: config.intermediate_size,
            experts,
            layers: config.num_hidden_layers,
        })
    }

    /// The experts rank `rank` holds: contiguous, as even as the count allows.
    pub fn experts(&self, rank: i32) -> Range<i32> {
        if self.parallel != Parallel::Expert {
            return 0..self.experts;
        }
        let (base, extra) = (self.experts / self.ranks, self.experts % self.ranks);
        let start = rank * base + rank.min(extra);
        start..start + base + i32::from(rank < extra)
    }

    fn part(&self, size: i32, split: bool) -> i32 {
        if split {
            size / self.ranks
        } else {
            size
        }
    }

    /// Slices every split tensor of `weights` down to rank `rank`'s part.
    pub fn apply(&self, weights: &mut Weights, rank: i32) -> Result<()> {
        for layer in 0..self.layers {
            let attn = format!("model.layers.{layer}.self_attn");
            if self.split_heads {
                for proj in ["q_proj", "k_proj", "v_proj"] {
                    for part in ["weight", "scales", "biases", "bias"] {
                        self.cut(weights, &format!("{attn}.{proj}.{part}"), 0, rank)?;
                    }
                }
                self.cut(weights, &format!("{attn}.sinks"), 0, rank)?;
                for part in ["weight", "scales", "biases"] {
                    self.cut(weights, &format!("{attn}.o_proj.{part}"), -1, rank)?;
                }
            }
            let experts = format!("model.layers.{layer}.mlp.experts");
            match self.parallel {
                Parallel::Tensor if self.split_intermediate => {
                    for proj in ["gate_proj", "up_proj"] {
                        for part in ["weight", "scales", "biases"] {
                            self.cut(weights, &format!("{experts}.{proj}.{part}"), -2, rank)?;
                        }
                        self.cut(weights, &format!("{experts}.{proj}.bias"), -1, rank)?;
                    }
                    for part in ["weight", "scales", "biases"] {
                        self.cut(weights, &format!("{experts}.down_proj.{part}"), -1, rank)?;
                    }
                    if rank != 0 {
                        weights.replace(&format!("{experts}.down_proj.bias"), |b| {
                            Ok(Array::zeros(&b.shape(), b.dtype())?)
                        })?;
                    }
                }
                Parallel::Tensor => {}
                Parallel::Expert => {
                    let held = self.experts(rank);
                    for proj in ["gate_proj", "up_proj", "down_proj"] {
                        for part in ["weight", "scales", "biases", "bias"] {
                            let name = format!("{experts}.{proj}.{part}");
                            if weights.contains(&name) {
                                weights.replace(&name, |t| {
                                    Ok(t.slice_axis(0, held.start, held.end)?.contiguous()?)
                                })?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Rank `rank`'s equal part of `name` along `axis`, if the tensor exists
    /// (scales and affine biases only for quantized modules).
    fn cut(&self, weights: &mut Weights, name: &str, axis: i32, rank: i32) -> Result<()> {
        if !weights.contains(name) {
            return Ok(());
        }
        let n = self.ranks;
        weights.replace(name, |t| {
            let size = t.dim(axis)?;
            let part = size / n;
            Ok(t.slice_axis(axis, rank * part, (rank + 1) * part)?.contiguous()?)
        })?;
        Ok(())
    }

    /// One line: what rank `rank` holds and, under expert parallel, whether
    /// it computes only its own experts' pairs (`own_pairs_only`, as
    /// [`crate::model::GptOss::computes_only_own_experts`] says).
    pub fn describe(&self, rank: i32, own_pairs_only: bool) -> String {
        let heads = self.part(self.heads, self.split_heads);
        let kv = self.part(self.kv_heads, self.split_heads);
        let experts = self.experts(rank);
        let attention = if self.split_heads {
            format!("heads {heads} of {} (kv {kv} of {})", self.heads, self.kv_heads)
        } else {
            format!("all {} heads", self.heads)
        };
        let experts = match self.parallel {
            Parallel::Tensor => format!(
                "all {} experts at intermediate {} of {}",
                self.experts,
                self.part(self.intermediate, self.split_intermediate),
                self.intermediate
            ),
            Parallel::Expert => format!(
                "experts {}..{} ({} of {}), {}",
                experts.start,
                experts.end,
                experts.len(),
                self.experts,
                if own_pairs_only {
                    "computing only its own experts' pairs"
                } else {
                    "computing every routed pair, other ranks' weighted by zero (MLX's kernels have no \
                     data-dependent skip)"
                }
            ),
        };
        format!(
            "rank {rank}/{} ({} parallel): all {} layers, {attention}, {experts}",
            self.ranks, self.parallel, self.layers
        )
    }
}

/// "2, 4 and 8", or what to do when nothing works.
fn describe_counts(counts: &[i32], parallel: Parallel) -> String {
    match counts {
        [] if parallel == Parallel::Tensor => {
            "no rank count above 1 works for this model with --parallel tensor (try --parallel expert)"
                .to_string()
        }
        [] => "no rank count above 1 works for this model".to_string(),
        [one] => format!("it works with {one} ranks"),
        [init @ .., last] => format!(
            "it works with {} or {last} ranks",
            init.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Every even cut the heads-and-columns split needs, per layer (quantization
/// may differ between layers).
fn cuts(config: &Config, weights: &Weights, parallel: Parallel) -> Result<Vec<Cut>> {
    let mut cuts = Vec::new();
    for layer in 0..config.num_hidden_layers {
        let attn = format!("model.layers.{layer}.self_attn");
        cuts.push(Cut {
            tensor: format!("{attn}.k_proj.weight"),
            what: "key/value heads".into(),
            size: config.num_key_value_heads,
            unit: 1,
        });
        cuts.push(columns(
            weights,
            &format!("{attn}.o_proj"),
            config.num_attention_heads * config.head_dim,
        )?);
        if parallel == Parallel::Tensor {
            let experts = format!("model.layers.{layer}.mlp.experts");
            cuts.push(Cut {
                tensor: format!("{experts}.gate_proj.weight"),
                what: "intermediate rows".into(),
                size: config.intermediate_size,
                unit: 1,
            });
            cuts.push(columns(
                weights,
                &format!("{experts}.down_proj"),
                config.intermediate_size,
            )?);
        }
    }
    Ok(cuts)
}

/// Splitting a matrix's `inputs` columns: whole quantization groups per rank.
fn columns(weights: &Weights, module: &str, inputs: i32) -> Result<Cut> {
    let scales = format!("{module}.scales");
    if !weights.contains(&scales) {
        return Ok(Cut {
            tensor: format!("{module}.weight"),
            what: "input columns".into(),
            size: inputs,
            unit: 1,
        });
    }
    let groups = *weights.peek_shape(&scales)?.last().unwrap_or(&1);
    let unit = if groups > 0 { inputs / groups } else { 1 };
    Ok(Cut {
        tensor: scales,
        what: "quantization groups per row".into(),
        size: inputs,
        unit: unit.max(1),
    })
}

impl fmt::Display for Parallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parallel::Tensor => "tensor",
            Parallel::Expert => "expert",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expert_split(experts: i32, ranks: i32) -> Split {
        Split {
            parallel: Parallel::Expert,
            ranks,
            split_heads: false,
            split_intermediate: false,
            heads: 8,
            kv_heads: 2,
            intermediate: 64,
            experts,
            layers: 1,
        }
    }

    #[test]
    fn expert_ranges_cover_every_expert_once_and_differ_by_at_most_one() {
        for (experts, ranks) in [(8, 3), (32, 2), (128, 7), (4, 4), (5, 2)] {
            let split = expert_split(experts, ranks);
            let ranges: Vec<_> = (0..ranks).map(|r| split.experts(r)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, experts);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{ranges:?}");
            }
            let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1 && *min >= 1, "{experts} over {ranks}: {sizes:?}");
        }
        assert_eq!(expert_split(8, 3).experts(2), 6..8);
    }

    #[test]
    fn working_rank_counts_read_as_a_list() {
        assert_eq!(describe_counts(&[2], Parallel::Tensor), "it works with 2 ranks");
        assert_eq!(
            describe_counts(&[2, 4, 8], Parallel::Tensor),
            "it works with 2, 4 or 8 ranks"
        );
        assert!(describe_counts(&[], Parallel::Tensor).contains("try --parallel expert"));
    }
}
