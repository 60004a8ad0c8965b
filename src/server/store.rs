//! Answered `/v1/responses` kept in memory, so that a request naming one as
//! `previous_response_id` continues its conversation, and
//! `GET`/`DELETE /v1/responses/{id}` find it. Bounded by count and by bytes;
//! the least recently used go first. Nothing survives a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

/// One stored response.
#[derive(Debug)]
pub struct Stored {
    /// The whole conversation as Responses input items: every earlier
    /// input and output, this request's input, then this response's output.
    /// A follow-up's input is appended to it.
    pub conversation: Vec<Value>,
    /// The prompt it was generated from: a follow-up whose prompt starts
    /// with it finds its state in the prefix cache.
    pub prompt: Vec<u32>,
    /// The response object, as `GET /v1/responses/{id}` returns it.
    pub response: Value,
}

impl Stored {
    /// What it holds, in bytes, as the bound counts it: the JSON as
    /// serialized (a fair measure of the values behind it) and the tokens.
    fn bytes(&self) -> usize {
        let json: usize = self
            .conversation
            .iter()
            .chain([&self.response])
            .map(|v| v.to_string().len())
            .sum();
        json + self.prompt.len() * size_of::<u32>()
    }
}

struct Entry {
    stored: Arc<Stored>,
    bytes: usize,
    last_used: u64,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

pub struct Store {
    max_count: usize,
    max_bytes: usize,
    entries: Mutex<Entries>,
}

impl Store {
    /// A store of at most `max_count` responses and `max_bytes`; 0 of
    /// either stores nothing.
    pub fn new(max_count: usize, max_bytes: usize) -> Store {
        Store {
            max_count,
            max_bytes,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A panic elsewhere while holding it leaves the map consistent:
        // every change below is a single insert or remove.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `stored` as `id`, evicting the least recently used to make
    /// room; false when it alone exceeds the bound (then it is not kept).
    pub fn insert(&self, id: &str, stored: Stored) -> bool {
        let bytes = stored.bytes();
        if self.max_count == 0 || bytes > self.max_bytes {
            return false;
        }
        let mut entries = self.lock();
        while entries.by_id.len() >= self.max_count || entries.bytes + bytes > self.max_bytes {
            let oldest = entries
                .by_id
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| id.clone())
                .expect("over the bound means some entry exists");
            let evicted = entries.by_id.remove(&oldest).expect("the oldest is present");
            entries.bytes -= evicted.bytes;
        }
        entries.clock += 1;
        let last_used = entries.clock;
        entries.bytes += bytes;
        let entry = Entry {
            stored: Arc::new(stored),
            bytes,
            last_used,
        };
        if let Some(replaced) = entries.by_id.insert(id.to_string(), entry) {
            entries.bytes -= replaced.bytes;
        }
        true
    }

    /// The response `id`, now the most recently used.
    pub fn get(&self, id: &str) -> Option<Arc<Stored>> {
        let mut entries = self.lock();
        entries.clock += 1;
        let now = entries.clock;
        let entry = entries.by_id.get_mut(id)?;
        entry.last_used = now;
        Some(entry.stored.clone())
    }

    /// Forgets `id`; false when it was not stored.
    pub fn remove(&self, id: &str) -> bool {
        let mut entries = self.lock();
        match entries.by_id.remove(id) {
            Some(entry) => {
                entries.bytes -= entry.bytes;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            conversation: vec![json!({"role": "user", "content": text})],
            prompt: vec![1, 2, 3],
            response: json!({}),
        }
    }

    #[test]
    fn the_least_recently_used_goes_first_by_count() {
        let store = Store::new(2, 1 << 20);
        assert!(store.insert("a", stored("a")));
        assert!(store.insert("b", stored("b")));
        // Reading `a` makes `b` the oldest.
        assert!(store.get("a").is_some());
        assert!(store.insert("c", stored("c")));
        assert!(store.get("b").is_none());
        assert_eq!(store.get("a").unwrap().conversation[0]["content"], "a");
        assert!(store.get("c").is_some());
    }

    #[test]
    fn bytes_bound_the_store_and_removal_frees_them() {
        let one = stored("x").bytes();
        let store = Store::new(100, 2 * one);
        for id in ["a", "b", "c"] {
            assert!(store.insert(id, stored("x")));
        }
        assert!(
            store.get("a").is_none(),
            "a third entry of the same size evicts the first"
        );
        assert!(store.remove("b"));
        assert!(!store.remove("b"));
        assert_eq!(store.lock().bytes, one);
        // Too large alone: not kept, and nothing else is evicted for it.
        assert!(!store.insert("big", stored(&"y".repeat(4 * one))));
        assert!(store.get("c").is_some());
        // No room at all: nothing is kept.
        assert!(!Store::new(0, 1 << 20).insert("a", stored("a")));
    }
}
