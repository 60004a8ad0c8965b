//! gpt-oss, read side by side with mlx-lm's `models/gpt_oss.py`: attention
//! with learned sinks over alternating sliding-window and full layers, YaRN
//! RoPE, and a top-k mixture of clamped-SwiGLU experts.

use std::ops::Range;
use std::path::Path;

use super::config::{Config, LayerType};
use super::layers::{Embedding, Linear, Param, RmsNorm, SwitchLinear};
use super::load::Scope;
use super::rope::Rope;
use super::{LoadOptions, Result, Shard, Weights};
use crate::kernels::ForeignExpert;
use crate::mlx::distributed::Group;
use crate::mlx::fast::{self, AttentionMask};
use crate::mlx::{self, Array, Dtype};

/// The parts of a forward, in order, as a [`Probe`] sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Embedding,
    /// Norm, attention and the residual, per layer.
    Attention,
    /// The router's logits, per layer.
    Router,
    /// Norm, experts and the residual, per layer.
    Experts,
    /// Final norm and lm_head.
    Head,
}

/// Called with each stage's output as the forward builds it; profiling
/// evaluates there to time the stages (`safeguard bench --profile`).
pub type Probe<'p> = &'p mut dyn FnMut(Stage, &Array) -> Result<()>;

/// Which keys each query may see in one forward step.
#[derive(Debug, Clone)]
pub enum Mask {
    /// A single query sees every cached key.
    None,
    /// Queries aligned to the end of the keys see keys up to their own position.
    Causal,
    /// Explicit `[queries, keys]` booleans (sliding windows).
    Array(Array),
}

impl Mask {
    /// mlx-lm's `create_causal_mask`: queries at `offset..offset+n` over keys
    /// `0..offset+n`, each seeing at most `window` keys ending at itself.
    pub fn causal(n: i32, offset: i32, window: Option<i32>) -> Result<Mask> {
        let keys = Array::arange(0.0, f64::from(offset + n), 1.0, Dtype::Int32)?.expand_dims(0)?;
        let queries =
            Array::arange(f64::from(offset), f64::from(offset + n), 1.0, Dtype::Int32)?.expand_dims(1)?;
        let mut mask = queries.greater_equal(&keys)?;
        if let Some(window) = window {
            mask = mask
                .logical_and(&queries.less(&keys.add(&Array::scalar_int(window.into(), Dtype::Int32)?)?)?)?;
        }
        Ok(Mask::Array(mask))
    }

    fn as_attention_mask(&self) -> AttentionMask<'_> {
        match self {
            Mask::None => AttentionMask::None,
            Mask::Causal => AttentionMask::Causal,
            Mask::Array(mask) => AttentionMask::Array(mask),
        }
    }
}

/// A layer's key/value cache, as the model uses it (engine/cache.rs has them).
pub trait AttentionCache {
    /// Tokens seen so far: the position of the next one.
    fn offset(&self) -> i32;
    /// Appends `[batch, kv_heads, n, head_dim]` keys and values and returns all
    /// keys and values attention should read.
    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)>;
    /// The mask for `n` new queries (before they are added).
    fn make_mask(&self, n: i32, window: Option<i32>) -> Result<Mask>;
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Set when the heads are split across ranks: o_proj's partial outputs are summed.
    group: Option<Group>,
    sinks: Array,
    head_dim: i32,
    scale: f32,
    rope: Rope,
}

impl Attention {
    fn load(mut s: Scope, cfg: &Config, shard: Option<&Shard>) -> Result<Attention> {
        let (hidden, d) = (cfg.hidden_size, cfg.head_dim);
        let (mut heads, mut kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        if let Some(shard) = shard {
            (heads, kv_heads) = (shard.heads(heads), shard.heads(kv_heads));
        }
        Ok(Attention {
            q_proj: Linear::load(s.pp("q_proj"), hidden, heads * d, true)?,
            k_proj: Linear::load(s.pp("k_proj"), hidden, kv_heads * d, true)?,
            v_proj: Linear::load(s.pp("v_proj"), hidden, kv_heads * d, true)?,
            o_proj: Linear::load(s.pp("o_proj"), heads * d, hidden, true)?,
            group: shard.filter(|s| s.split_heads).map(|s| s.group.clone()),
            sinks: s.take_float("sinks", &[heads])?,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            rope: Rope::new(d, cfg.rope_theta, cfg.rope_scaling.as_ref())?,
        })
    }

    /// `x [B, L, hidden]` → `[B, L, hidden]`. One cache and mask for the
    /// whole batch, or one per row: rows with their own caches attend apart
    /// (each at its own position), so a row computes exactly what it would
    /// alone.
    fn forward<C: AttentionCache>(&self, x: &Array, masks: &[&Mask], caches: &mut [&mut C]) -> Result<Array> {
        let (b, l) = (x.dim(0)?, x.dim(1)?);
        let split_heads = |t: Array| t.reshape(&[b, l, -1, self.head_dim])?.swapaxes(1, 2);
        let q = split_heads(self.q_proj.forward(x)?)?;
        let k = split_heads(self.k_proj.forward(x)?)?;
        let v = split_heads(self.v_proj.forward(x)?)?;
        let out = if let [cache] = caches {
            self.attend(&q, &k, &v, masks[0], *cache)?
        } else {
            let rows = (0..b)
                .map(|r| {
                    let row = |t: &Array| t.slice_axis(0, r, r + 1);
                    self.attend(
                        &row(&q)?,
                        &row(&k)?,
                        &row(&v)?,
                        masks[r as usize],
                        caches[r as usize],
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            mlx::concatenate(&rows.iter().collect::<Vec<_>>(), 0)?
        };
        let out = out.swapaxes(1, 2)?.reshape(&[b, l, -1])?;
        match &self.group {
            Some(group) => self.o_proj.forward_all_sum(&out, group),
            None => self.o_proj.forward(&out),
        }
    }

    /// Attention of `q`, `k`, `v` `[B, heads, L, head_dim]` at the cache's position.
    fn attend(
        &self,
        q: &Array,
        k: &Array,
        v: &Array,
        mask: &Mask,
        cache: &mut impl AttentionCache,
    ) -> Result<Array> {
        let offset = cache.offset();
        let q = self.rope.forward(q, offset)?;
        let k = self.rope.forward(k, offset)?;
        let (k, v) = cache.update_and_fetch(&k, v)?;
        Ok(fast::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            self.scale,
            mask.as_attention_mask(),
            Some(&self.sinks),
        )?)
    }
}

/// The experts' SwiGLU variant: the gate clamped from above, the linear part
/// clamped both ways and shifted by one.
fn swiglu(x_linear: &Array, x_gate: &Array, limit: f32) -> Result<Array> {
    const ALPHA: f64 = 1.702;
    let gate = x_gate.minimum(&x_gate.scalar_like(limit.into())?)?;
    let linear = x_linear.clip(
        Some(&x_linear.scalar_like(-f64::from(limit))?),
        Some(&x_linear.scalar_like(limit.into())?),
    )?;
    let glu = gate.multiply(&gate.multiply(&gate.scalar_like(ALPHA)?)?.sigmoid()?)?;
    Ok(linear.add(&linear.scalar_like(1.0)?)?.multiply(&glu)?)
}

/// Token/expert pairs from which gathering is sorted by expert (mlx-lm's rule).
const SORT_THRESHOLD: usize = 64;

struct Experts {
    gate_proj: SwitchLinear,
    up_proj: SwitchLinear,
    down_proj: SwitchLinear,
    limit: f32,
    /// How routing names another rank's expert (expert parallel).
    foreign: ForeignExpert,
}

impl Experts {
    /// `x [B, L, hidden]`, `indices [B, L, k]` → `[B, L, k, hidden]`.
    fn forward(&self, x: &Array, indices: &Array) -> Result<Array> {
        let x = x.expand_dims(-2)?.expand_dims(-3)?; // [B, L, 1, 1, hidden]
        let mut shape = indices.shape();
        let sort = indices.size() >= SORT_THRESHOLD;
        let (x, idx, inverse) = if sort {
            // Group the (token, expert) pairs by expert so each expert's
            // weights are read once.
            let k = shape.pop().expect("indices are [B, L, k]");
            let flat = indices.reshape(&[-1])?;
            let order = flat.argsort(0)?;
            let tokens = order.floor_divide(&Array::scalar_int(k.into(), order.dtype())?)?;
            let rows = x.reshape(&[-1, 1, x.dim(-1)?])?.take(&tokens, 0)?;
            shape.push(k);
            (rows, flat.take(&order, 0)?, Some(order.argsort(0)?))
        } else {
            (x, indices.clone(), None)
        };
        let up = self.up_proj.forward(&x, &idx, sort, self.foreign)?;
        let gate = self.gate_proj.forward(&x, &idx, sort, self.foreign)?;
        let mut y = self
            .down_proj
            .forward(&swiglu(&up, &gate, self.limit)?, &idx, sort, self.foreign)?;
        if let Some(inverse) = inverse {
            y = y.take(&inverse, 0)?;
            let mut unflat = shape;
            unflat.extend(&y.shape()[1..]);
            y = y.reshape(&unflat)?;
        }
        Ok(y.squeeze(-2)?)
    }
}

struct MoeBlock {
    router: Linear,
    experts: Experts,
    top_k: i32,
    /// Expert parallel: the experts this rank holds, out of all the router scores.
    local_experts: Option<Range<i32>>,
    /// Set when the experts are split across ranks: partial outputs are summed.
    group: Option<Group>,
}

impl MoeBlock {
    fn load(mut s: Scope, cfg: &Config, shard: Option<&Shard>) -> Result<MoeBlock> {
        let (e, hidden) = (cfg.num_local_experts, cfg.hidden_size);
        let local_experts = shard.filter(|s| s.splits_experts(e)).map(|s| s.experts.clone());
        let held = local_experts.as_ref().map_or(e, |r| r.end - r.start);
        let inter = shard.map_or(cfg.intermediate_size, |s| s.intermediate(cfg.intermediate_size));
        let router = Linear::load(s.pp("router"), hidden, e, true)?;
        let mut experts = s.pp("experts");
        let gate_proj = SwitchLinear::load(experts.pp("gate_proj"), held, hidden, inter)?;
        let up_proj = SwitchLinear::load(experts.pp("up_proj"), held, hidden, inter)?;
        let down_proj = SwitchLinear::load(experts.pp("down_proj"), held, inter, hidden)?;
        let skips = [&gate_proj, &up_proj, &down_proj]
            .iter()
            .all(|p| p.foreign_expert() == ForeignExpert::Zero);
        let experts = Experts {
            foreign: if local_experts.is_some() && skips {
                ForeignExpert::Zero
            } else {
                ForeignExpert::Invalid
            },
            gate_proj,
            up_proj,
            down_proj,
            limit: cfg.swiglu_limit,
        };
        Ok(MoeBlock {
            group: shard
                .filter(|s| s.split_intermediate || local_experts.is_some())
                .map(|s| s.group.clone()),
            local_experts,
            router,
            experts,
            top_k: cfg.num_experts_per_tok,
        })
    }

    /// Expert parallel: the router's choice as this rank's experts see it.
    /// Pairs routed to another rank's experts weigh nothing here, and their
    /// index is one past our last expert, which our CPU kernels skip; MLX's
    /// kernels cannot skip, so there it names our expert 0, computed and
    /// weighted by zero.
    fn local_routing(&self, held: &Range<i32>, indices: &Array, weights: &Array) -> Result<(Array, Array)> {
        let first = Array::scalar_int(held.start.into(), indices.dtype())?;
        let end = Array::scalar_int(held.end.into(), indices.dtype())?;
        let mine = indices.greater_equal(&first)?.logical_and(&indices.less(&end)?)?;
        let foreign = match self.experts.foreign {
            ForeignExpert::Zero => held.end - held.start,
            ForeignExpert::Invalid => 0,
        };
        let indices = mlx::where_(
            &mine,
            &indices.subtract(&first)?,
            &Array::scalar_int(foreign.into(), indices.dtype())?,
        )?;
        Ok((indices, weights.multiply(&mine.astype(weights.dtype())?)?))
    }

    fn forward(&self, x: &Array, probe: Probe<'_>) -> Result<Array> {
        let g = self.router.forward(x)?; // [B, L, experts]
        probe(Stage::Router, &g)?;
        // Top-k by partition (unordered, as mlx-lm), softmax over the k.
        let indices = g
            .argpartition(-self.top_k, -1)?
            .slice_axis(-1, -self.top_k, g.dim(-1)?)?;
        let expert_weights = g.take_along_axis(&indices, -1)?.softmax(&[-1], true)?;
        let (indices, expert_weights) = match &self.local_experts {
            Some(held) => self.local_routing(held, &indices, &expert_weights)?,
            None => (indices, expert_weights),
        };
        let y = self.experts.forward(x, &indices)?; // [B, L, k, hidden]
        let y = y.multiply(&expert_weights.expand_dims(-1)?)?.sum(&[-2], false)?;
        match &self.group {
            Some(group) => Ok(group.all_sum(&y)?),
            None => Ok(y),
        }
    }
}

struct TransformerBlock {
    self_attn: Attention,
    mlp: MoeBlock,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    layer_type: LayerType,
}

impl TransformerBlock {
    fn forward<C: AttentionCache>(
        &self,
        x: &Array,
        masks: &[&Mask],
        caches: &mut [&mut C],
        probe: Probe<'_>,
    ) -> Result<Array> {
        let h = x.add(
            &self
                .self_attn
                .forward(&self.input_layernorm.forward(x)?, masks, caches)?,
        )?;
        probe(Stage::Attention, &h)?;
        let out = h.add(
            &self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?, probe)?,
        )?;
        probe(Stage::Experts, &out)?;
        Ok(out)
    }
}

pub struct GptOss {
    pub config: Config,
    embed_tokens: Embedding,
    layers: Vec<TransformerBlock>,
    norm: RmsNorm,
    lm_head: Linear,
    dtype: Dtype,
}

impl GptOss {
    /// Loads a model folder: config.json and its safetensors shards.
    pub fn load(dir: &Path, options: impl Into<LoadOptions>) -> Result<GptOss> {
        let config = Config::load(dir)?;
        let weights = Weights::open(dir, options)?;
        GptOss::assemble(config, weights, None)
    }

    /// Builds the model (or this rank's `shard` of it, from weights already
    /// sliced to it) and reads every weight in.
    pub fn assemble(config: Config, mut weights: Weights, shard: Option<&Shard>) -> Result<GptOss> {
        let model = GptOss::from_weights(config, &mut weights, shard)?;
        weights.finish()?;
        mlx::eval(&model.parameters().iter().map(|p| p.array).collect::<Vec<_>>())?;
        Ok(model)
    }

    pub fn from_weights(config: Config, weights: &mut Weights, shard: Option<&Shard>) -> Result<GptOss> {
        if weights.contains_original_layout() {
            weights.sanitize_original_layout()?;
        }
        let (vocab, hidden, eps) = (config.vocab_size, config.hidden_size, config.rms_norm_eps);
        let dtype = weights.compute_dtype();
        let mut root = Scope::root(weights, config.quantization.as_ref());
        let mut model = root.pp("model");
        let layers = config
            .layer_types()
            .into_iter()
            .enumerate()
            .map(|(i, layer_type)| {
                let mut layer = model.pp(format_args!("layers.{i}"));
                Ok(TransformerBlock {
                    self_attn: Attention::load(layer.pp("self_attn"), &config, shard)?,
                    mlp: MoeBlock::load(layer.pp("mlp"), &config, shard)?,
                    input_layernorm: RmsNorm::load(layer.pp("input_layernorm"), hidden, eps)?,
                    post_attention_layernorm: RmsNorm::load(
                        layer.pp("post_attention_layernorm"),
                        hidden,
                        eps,
                    )?,
                    layer_type,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = Embedding::load(model.pp("embed_tokens"), vocab, hidden)?;
        let norm = RmsNorm::load(model.pp("norm"), hidden, eps)?;
        let lm_head = Linear::load(root.pp("lm_head"), hidden, vocab, false)?;
        Ok(GptOss {
            embed_tokens,
            layers,
            norm,
            lm_head,
            dtype,
            config,
        })
    }

    /// Under expert parallel, whether every layer computes only its own
    /// experts' pairs (our CPU kernels skip the others'), rather than every
    /// routed pair with other ranks' weighted by zero (MLX's kernels).
    pub fn computes_only_own_experts(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.mlp.experts.foreign == ForeignExpert::Zero)
    }

    /// The dtype activations are computed in.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub fn layer_types(&self) -> Vec<LayerType> {
        self.layers.iter().map(|l| l.layer_type).collect()
    }

    /// `tokens [B, L]` → logits `[B, L, vocab]`, reading and extending one
    /// cache per layer.
    pub fn forward(&self, tokens: &Array, caches: &mut [impl AttentionCache]) -> Result<Array> {
        self.forward_rows(tokens, &mut [caches])
    }

    /// `tokens [B, L]` → logits `[B, L, vocab]` where row `b` has caches of
    /// its own, `caches[b]` (one per layer), and so its own position: batched
    /// decoding of sequences of different lengths. Everything but attention
    /// runs on the whole batch; each row's result equals a forward of it alone.
    pub fn forward_rows<C: AttentionCache>(&self, tokens: &Array, caches: &mut [&mut [C]]) -> Result<Array> {
        self.forward_probed(tokens, caches, &mut |_, _| Ok(()))
    }

    /// [`GptOss::forward_rows`], calling `probe` after each stage.
    pub fn forward_probed<C: AttentionCache>(
        &self,
        tokens: &Array,
        caches: &mut [&mut [C]],
        probe: Probe<'_>,
    ) -> Result<Array> {
        let mut x = self.embed_tokens.forward(tokens)?;
        probe(Stage::Embedding, &x)?;
        let n = tokens.dim(1)?;
        let window = self.config.sliding_window;
        // Every layer of a type shares one mask per row, made from that type's first cache.
        let first = |t| self.layers.iter().position(|l| l.layer_type == t);
        let mask = |row: &[C], t, window| match first(t) {
            Some(i) => row[i].make_mask(n, window),
            None => Ok(Mask::None),
        };
        let full_masks = caches
            .iter()
            .map(|row| mask(row, LayerType::FullAttention, None))
            .collect::<Result<Vec<_>>>()?;
        let sliding_masks = caches
            .iter()
            .map(|row| mask(row, LayerType::SlidingAttention, Some(window)))
            .collect::<Result<Vec<_>>>()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let masks: Vec<&Mask> = match layer.layer_type {
                LayerType::FullAttention => full_masks.iter().collect(),
                LayerType::SlidingAttention => sliding_masks.iter().collect(),
            };
            let mut layer_caches: Vec<&mut C> = caches.iter_mut().map(|row| &mut row[i]).collect();
            x = layer.forward(&x, &masks, &mut layer_caches, probe)?;
        }
        let logits = self.lm_head.forward(&self.norm.forward(&x)?)?;
        probe(Stage::Head, &logits)?;
        Ok(logits)
    }

    /// Every weight array, e.g. to evaluate them all after loading.
    /// Logical parameters (see [`Param::logical`]): all of them, and the
    /// experts' share — counted from the matrices as loaded, so by the same
    /// quantization rule the loader applied.
    pub fn parameter_counts(&self) -> (u64, u64) {
        self.parameters().iter().fold((0, 0), |(all, experts), p| {
            (all + p.logical, experts + if p.expert { p.logical } else { 0 })
        })
    }

    fn parameters(&self) -> Vec<Param<'_>> {
        let mut params = Vec::new();
        self.embed_tokens.collect(&mut params);
        for layer in &self.layers {
            let a = &layer.self_attn;
            for linear in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &layer.mlp.router] {
                linear.collect(&mut params);
            }
            params.push(Param::plain(&a.sinks));
            for switch in [
                &layer.mlp.experts.gate_proj,
                &layer.mlp.experts.up_proj,
                &layer.mlp.experts.down_proj,
            ] {
                switch.collect(&mut params);
            }
            layer.input_layernorm.collect(&mut params);
            layer.post_attention_layernorm.collect(&mut params);
        }
        self.norm.collect(&mut params);
        self.lm_head.collect(&mut params);
        params
    }
}
