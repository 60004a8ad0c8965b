//! Reusing the KV state of a shared prompt prefix (the system message and the
//! policy) across every item and request that starts with it. Caches are
//! immutable MLX graphs underneath, so a copy is cheap and writes to one copy
//! never show in another (copy-on-write for free). Entries are evicted least
//! recently used first, bounded by their bytes.

use super::cache::{make_caches, LayerCache};
use super::generate::prefill;
use super::Result;
use crate::mlx::Array;
use crate::model::GptOss;

struct Entry {
    tokens: Vec<u32>,
    caches: Vec<LayerCache>,
    bytes: usize,
    last_used: u64,
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    capacity_bytes: usize,
    clock: u64,
    hits: u64,
    misses: u64,
}

impl PrefixCache {
    pub fn new(capacity_bytes: usize) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            capacity_bytes,
            clock: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Caches holding the longest stored beginning of `prefix` as a private
    /// copy and the tokens they hold, or empty caches and 0 when none is
    /// stored; the caller prefills the rest and may [`PrefixCache::store`]
    /// it. The longest, because a conversation's follow-up starts with the
    /// whole earlier prompt, which starts with the system message.
    pub fn lookup(&mut self, model: &GptOss, prefix: &[u32]) -> (Vec<LayerCache>, usize) {
        self.clock += 1;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .filter(|e| prefix.starts_with(&e.tokens))
            .max_by_key(|e| e.tokens.len())
        {
            entry.last_used = self.clock;
            self.hits += 1;
            return (entry.caches.clone(), entry.tokens.len());
        }
        self.misses += 1;
        (make_caches(model), 0)
    }

    /// Keeps `caches`, which hold exactly `prefix`, unless they alone exceed
    /// the capacity; older entries make room.
    pub fn store(&mut self, prefix: &[u32], caches: &[LayerCache]) {
        if self.entries.iter().any(|e| e.tokens == prefix) {
            return;
        }
        let bytes = caches.iter().flat_map(LayerCache::state).map(Array::nbytes).sum();
        if bytes > self.capacity_bytes {
            return;
        }
        while self.bytes() + bytes > self.capacity_bytes {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].last_used)
                .expect("over capacity means some entry exists");
            self.entries.swap_remove(oldest);
        }
        self.entries.push(Entry {
            tokens: prefix.to_vec(),
            caches: caches.to_vec(),
            bytes,
            last_used: self.clock,
        });
    }

    /// Caches holding `prefix` (prefilled now, `prefill_step` tokens per
    /// forward, and stored, unless it was), as a private copy, and how many
    /// of its tokens came from the cache.
    pub fn caches_for(
        &mut self,
        model: &GptOss,
        prefix: &[u32],
        prefill_step: usize,
    ) -> Result<(Vec<LayerCache>, usize)> {
        let (mut caches, cached) = self.lookup(model, prefix);
        if cached < prefix.len() {
            prefill(model, &mut caches, &prefix[cached..], prefill_step)?;
            self.store(prefix, &caches);
        }
        Ok((caches, cached))
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Bytes held by stored prefixes.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }
}
