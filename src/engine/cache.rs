//! Key/value caches, ported from mlx-lm's `models/cache.py` so a cached run
//! builds the same graph as mlx-lm's: a growing cache for full-attention
//! layers and a rotating one of the window size for sliding layers.

use crate::mlx::{concatenate, Array};
use crate::model::{AttentionCache, GptOss, LayerType, Mask, Result};

/// Cache capacity grows in steps of this many positions.
const STEP: i32 = 256;

/// One cache per layer of a model, of the kind the layer needs.
pub fn make_caches(model: &GptOss) -> Vec<LayerCache> {
    let window = model.config.sliding_window;
    model
        .layer_types()
        .into_iter()
        .map(|t| match t {
            LayerType::FullAttention => LayerCache::Full(KvCache::default()),
            LayerType::SlidingAttention => LayerCache::Rotating(RotatingKvCache::new(window)),
        })
        .collect()
}

/// Forgets the last `n` positions of every layer, to reuse the caches for a
/// different continuation, as mlx-lm's `trim_prompt_cache`. A sliding layer
/// whose ring has wrapped no longer holds what came before those positions,
/// so then nothing is trimmed. Returns the positions removed.
pub fn trim_caches(caches: &mut [LayerCache], n: i32) -> i32 {
    let trimmable = caches.iter().all(|c| match c {
        LayerCache::Full(_) => true,
        LayerCache::Rotating(r) => r.offset < r.max_size,
    });
    if !trimmable || caches.is_empty() {
        return 0;
    }
    caches
        .iter_mut()
        .map(|c| match c {
            LayerCache::Full(c) => c.trim(n),
            LayerCache::Rotating(c) => c.trim(n),
        })
        .min()
        .unwrap_or(0)
}

#[derive(Clone)]
pub enum LayerCache {
    Full(KvCache),
    Rotating(RotatingKvCache),
}

impl AttentionCache for LayerCache {
    fn offset(&self) -> i32 {
        match self {
            LayerCache::Full(c) => c.offset,
            LayerCache::Rotating(c) => c.offset,
        }
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        match self {
            LayerCache::Full(c) => c.update_and_fetch(keys, values),
            LayerCache::Rotating(c) => c.update_and_fetch(keys, values),
        }
    }

    fn make_mask(&self, n: i32, window: Option<i32>) -> Result<Mask> {
        match self {
            LayerCache::Full(c) => c.make_mask(n, window),
            LayerCache::Rotating(c) => c.make_mask(n, window),
        }
    }
}

impl LayerCache {
    /// The arrays holding this cache's state, e.g. to evaluate after a step.
    pub fn state(&self) -> Vec<&Array> {
        let (keys, values) = match self {
            LayerCache::Full(c) => (&c.keys, &c.values),
            LayerCache::Rotating(c) => (&c.keys, &c.values),
        };
        keys.iter().chain(values.iter()).collect()
    }
}

/// `[batch, kv_heads, positions, head_dim]` buffers grown in [`STEP`]s,
/// filled up to `offset`.
#[derive(Clone, Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
}

impl KvCache {
    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        let prev = self.offset;
        let n = keys.dim(2)?;
        let capacity = match &self.keys {
            Some(k) => k.dim(2)?,
            None => 0,
        };
        if self.keys.is_none() || prev + n > capacity {
            let steps = (STEP + n - 1) / STEP;
            let grow = |t: &Array, old: Option<&Array>| -> Result<Array> {
                let mut shape = t.shape();
                shape[2] = steps * STEP;
                let new = Array::zeros(&shape, t.dtype())?;
                Ok(match old {
                    // A partly filled buffer is cut to its contents first.
                    Some(old) if prev % STEP != 0 => concatenate(&[&old.slice_axis(2, 0, prev)?, &new], 2)?,
                    Some(old) => concatenate(&[old, &new], 2)?,
                    None => new,
                })
            };
            self.keys = Some(grow(keys, self.keys.as_ref())?);
            self.values = Some(grow(values, self.values.as_ref())?);
        }
        self.offset += n;
        let (k, v) = (
            self.keys.as_ref().expect("allocated above"),
            self.values.as_ref().expect("allocated above"),
        );
        self.keys = Some(k.slice_update_axis(keys, 2, prev, self.offset)?);
        self.values = Some(v.slice_update_axis(values, 2, prev, self.offset)?);
        self.keys_and_values()
    }

    fn keys_and_values(&self) -> Result<(Array, Array)> {
        let (k, v) = (
            self.keys.as_ref().expect("filled"),
            self.values.as_ref().expect("filled"),
        );
        if self.offset < k.dim(2)? {
            Ok((k.slice_axis(2, 0, self.offset)?, v.slice_axis(2, 0, self.offset)?))
        } else {
            Ok((k.clone(), v.clone()))
        }
    }

    fn make_mask(&self, n: i32, window: Option<i32>) -> Result<Mask> {
        match (window, n) {
            (Some(window), _) => Mask::causal(n, self.offset, Some(window)),
            (None, 1) => Ok(Mask::None),
            (None, _) => Ok(Mask::Causal),
        }
    }

    fn trim(&mut self, n: i32) -> i32 {
        let n = n.min(self.offset);
        self.offset -= n;
        n
    }
}

/// A ring of `max_size` positions for sliding-window layers. Multi-token steps
/// concatenate (keeping `max_size - 1` old positions so every new query sees a
/// full window) and one-token steps overwrite the oldest slot in place.
#[derive(Clone)]
pub struct RotatingKvCache {
    keys: Option<Array>,
    values: Option<Array>,
    offset: i32,
    max_size: i32,
    /// The next slot to write.
    idx: i32,
}

impl RotatingKvCache {
    pub fn new(max_size: i32) -> RotatingKvCache {
        RotatingKvCache {
            keys: None,
            values: None,
            offset: 0,
            max_size,
            idx: 0,
        }
    }

    /// Drops the oldest `trim` positions and appends `append`.
    fn drop_oldest(trim: i32, v: &Array, append: Option<&Array>) -> Result<Array> {
        let kept = if trim > 0 {
            v.slice_axis(2, trim, v.dim(2)?)?
        } else {
            v.clone()
        };
        Ok(match append {
            Some(a) => concatenate(&[&kept, a], 2)?,
            None => kept,
        })
    }

    /// The ring unrolled into time order, unused slots cut off.
    fn temporal_order(&self, v: &Array) -> Result<Array> {
        let len = v.dim(2)?;
        if self.idx == len {
            Ok(v.clone())
        } else if self.idx < self.offset {
            Ok(concatenate(
                &[&v.slice_axis(2, self.idx, len)?, &v.slice_axis(2, 0, self.idx)?],
                2,
            )?)
        } else {
            Ok(v.slice_axis(2, 0, self.idx)?)
        }
    }

    fn update_concat(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        match (&self.keys, &self.values) {
            (Some(k), Some(v)) => {
                let (k, v) = (self.temporal_order(k)?, self.temporal_order(v)?);
                self.idx = k.dim(2)?;
                let trim = self.idx - self.max_size + 1;
                self.keys = Some(Self::drop_oldest(trim, &k, Some(keys))?);
                self.values = Some(Self::drop_oldest(trim, &v, Some(values))?);
            }
            _ => {
                self.keys = Some(keys.clone());
                self.values = Some(values.clone());
            }
        }
        self.offset += keys.dim(2)?;
        let k = self.keys.clone().expect("set above");
        self.idx = k.dim(2)?;
        Ok((k, self.values.clone().expect("set above")))
    }

    fn update_in_place(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        let prev = self.offset;
        let n = keys.dim(2)?;
        let capacity = match &self.keys {
            Some(k) => k.dim(2)?,
            None => 0,
        };
        if self.keys.is_none() || (prev >= capacity && capacity < self.max_size) {
            let room = STEP.min(self.max_size - prev);
            let grow = |t: &Array, old: Option<&Array>| -> Result<Array> {
                let mut shape = t.shape();
                shape[2] = room;
                let new = Array::zeros(&shape, t.dtype())?;
                Ok(match old {
                    Some(old) => concatenate(&[old, &new], 2)?,
                    None => new,
                })
            };
            self.keys = Some(grow(keys, self.keys.as_ref())?);
            self.values = Some(grow(values, self.values.as_ref())?);
            self.idx = prev;
        }
        let (mut k, mut v) = (
            self.keys.take().expect("allocated"),
            self.values.take().expect("allocated"),
        );
        let trim = k.dim(2)? - self.max_size;
        if trim > 0 {
            k = Self::drop_oldest(trim, &k, None)?;
            v = Self::drop_oldest(trim, &v, None)?;
            self.idx = self.max_size;
        }
        if self.idx == self.max_size {
            self.idx = 0; // wrap around
        }
        self.keys = Some(k.slice_update_axis(keys, 2, self.idx, self.idx + n)?);
        self.values = Some(v.slice_update_axis(values, 2, self.idx, self.idx + n)?);
        self.offset += n;
        self.idx += n;
        let (k, v) = (
            self.keys.as_ref().expect("set"),
            self.values.as_ref().expect("set"),
        );
        if self.offset < k.dim(2)? {
            Ok((k.slice_axis(2, 0, self.offset)?, v.slice_axis(2, 0, self.offset)?))
        } else {
            Ok((k.clone(), v.clone()))
        }
    }

    /// Only valid before the ring wraps (see [`trim_caches`]).
    fn trim(&mut self, n: i32) -> i32 {
        let n = n.min(self.offset);
        self.offset -= n;
        self.idx -= n;
        n
    }

    fn update_and_fetch(&mut self, keys: &Array, values: &Array) -> Result<(Array, Array)> {
        if keys.dim(2)? == 1 {
            self.update_in_place(keys, values)
        } else {
            self.update_concat(keys, values)
        }
    }

    fn make_mask(&self, n: i32, window: Option<i32>) -> Result<Mask> {
        let window = window.unwrap_or(self.max_size);
        if n == 1 {
            // The ring holds exactly the window a single query may see.
            debug_assert!(
                window >= self.max_size,
                "windows narrower than the cache need a ring mask"
            );
            return Ok(Mask::None);
        }
        let offset = self.offset.min(self.max_size - 1);
        if offset + n > window {
            Mask::causal(n, offset, Some(window))
        } else {
            Ok(Mask::Causal)
        }
    }
}
