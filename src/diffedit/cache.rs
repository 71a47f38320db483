//! The engine's memory of stage results: a bounded, least-recently-used map from a [`Key`] (a
//! digest of everything a stage result depends on) to the tensors it produced.
//!
//! Keys are built from the *contents* of a stage's inputs (the picture's pixels, the noise's
//! values, the embedding of a prompt, the parameters that enter the arithmetic), never from
//! names or paths, so a result can only be reused where recomputing it would give the same
//! bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest as _, Sha256};

use crate::error::Result;

/// A SHA-256 digest identifying a stage result or an input.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.hex(8))
    }
}

impl Key {
    /// The first `bytes` bytes in lowercase hex.
    pub fn hex(&self, bytes: usize) -> String {
        self.0.iter().take(bytes).map(|b| format!("{b:02x}")).collect()
    }
}

/// Builds a [`Key`] field by field. Every field is written with its kind and length, so two
/// different sequences of fields can never hash the same bytes.
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// A key for results of `stage` (the stage name separates kinds of results).
    pub fn new(stage: &str) -> Self {
        let mut b = KeyBuilder(Sha256::new());
        b = b.str(stage);
        b
    }

    fn tagged(mut self, tag: u8, bytes: &[u8]) -> Self {
        self.0.update([tag]);
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn str(self, s: &str) -> Self {
        self.tagged(b's', s.as_bytes())
    }

    pub fn u64(self, v: u64) -> Self {
        self.tagged(b'u', &v.to_le_bytes())
    }

    /// Floats by their bits: 0.5 and 0.50000001 are different parameters.
    pub fn f64(self, v: f64) -> Self {
        self.tagged(b'f', &v.to_bits().to_le_bytes())
    }

    pub fn key(self, k: &Key) -> Self {
        self.tagged(b'k', &k.0)
    }

    pub fn opt_key(self, k: Option<&Key>) -> Self {
        match k {
            Some(k) => self.key(k),
            None => self.tagged(b'n', &[]),
        }
    }

    pub fn bytes(self, b: &[u8]) -> Self {
        self.tagged(b'b', b)
    }

    pub fn finish(self) -> Key {
        Key(self.0.finalize().into())
    }
}

/// The digest of a tensor's dtype, shape and values (copied to the CPU to read them).
pub fn tensor_key(t: &Tensor) -> Result<Key> {
    let dims: Vec<u8> = t.dims().iter().flat_map(|d| (*d as u64).to_le_bytes()).collect();
    let cpu = t.to_device(&Device::Cpu)?.flatten_all()?;
    let values: Vec<u8> = match t.dtype() {
        DType::F32 => cpu.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => cpu.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => cpu.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => cpu.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => cpu.to_dtype(DType::F64)?.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    Ok(KeyBuilder::new("tensor").str(t.dtype().as_str()).bytes(&dims).bytes(&values).finish())
}

/// What a stage produced.
#[derive(Clone)]
pub enum Cached {
    /// A prompt's embedding and whether the prompt was cut to the tokenizer's limit.
    Embedding { embedding: Tensor, truncated: bool },
    /// One tensor (a latent, a noise prediction, a decoded picture).
    Tensor(Tensor),
    /// A sequence of latents (an inversion or a decoding's history).
    Sequence(Vec<Tensor>),
}

impl Cached {
    /// Bytes the tensors hold (what the cache's budget counts).
    pub fn bytes(&self) -> usize {
        let of = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Cached::Embedding { embedding, .. } => of(embedding),
            Cached::Tensor(tensor) => of(tensor),
            Cached::Sequence(ts) => ts.iter().map(of).sum(),
        }
    }
}

/// Hits, misses and what is held, for summaries and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
    pub capacity_bytes: usize,
    pub evictions: u64,
}

struct Slot {
    value: Cached,
    bytes: usize,
    last_use: u64,
}

struct Inner {
    slots: HashMap<Key, Slot>,
    clock: u64,
    stats: CacheStats,
}

/// A bounded map of stage results, least recently used first out. Safe to share between
/// threads: lookups and insertions take a short lock; the work between them runs unlocked.
pub struct StageCache {
    inner: Mutex<Inner>,
}

impl StageCache {
    /// A cache holding at most `capacity_bytes` of tensors (0 keeps nothing).
    pub fn new(capacity_bytes: usize) -> Self {
        let stats = CacheStats { capacity_bytes, ..Default::default() };
        Self { inner: Mutex::new(Inner { slots: HashMap::new(), clock: 0, stats }) }
    }

    /// A cache of `mb` megabytes (2^20 bytes).
    pub fn with_megabytes(mb: usize) -> Self {
        Self::new(mb.saturating_mul(1 << 20))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock cannot leave a slot half-written (every
        // mutation is a single map operation), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Cached> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        match inner.slots.get_mut(key) {
            Some(slot) => {
                slot.last_use = now;
                let value = slot.value.clone();
                inner.stats.hits += 1;
                Some(value)
            }
            None => {
                inner.stats.misses += 1;
                None
            }
        }
    }

    /// Stores `value`, evicting the least recently used entries until the total fits. A value
    /// larger than the whole capacity is not stored.
    pub fn put(&self, key: Key, value: Cached) {
        let bytes = value.bytes();
        let mut inner = self.lock();
        let capacity = inner.stats.capacity_bytes;
        if bytes > capacity {
            return;
        }
        inner.clock += 1;
        let now = inner.clock;
        if let Some(old) = inner.slots.insert(key, Slot { value, bytes, last_use: now }) {
            inner.stats.bytes -= old.bytes;
        }
        inner.stats.bytes += bytes;
        while inner.stats.bytes > capacity {
            let Some(oldest) = inner.slots.iter().min_by_key(|(_, s)| s.last_use).map(|(k, _)| *k) else {
                break;
            };
            if let Some(s) = inner.slots.remove(&oldest) {
                inner.stats.bytes -= s.bytes;
                inner.stats.evictions += 1;
            }
        }
        inner.stats.entries = inner.slots.len();
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats { entries: inner.slots.len(), ..inner.stats }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.slots.clear();
        inner.stats.bytes = 0;
        inner.stats.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: usize) -> Tensor {
        Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap()
    }

    fn k(i: u64) -> Key {
        KeyBuilder::new("test").u64(i).finish()
    }

    #[test]
    fn keys_separate_fields_and_values() {
        assert_ne!(KeyBuilder::new("a").str("bc").finish(), KeyBuilder::new("a").str("b").str("c").finish());
        assert_ne!(KeyBuilder::new("a").f64(0.5).finish(), KeyBuilder::new("a").f64(0.5000001).finish());
        assert_eq!(KeyBuilder::new("a").u64(3).finish(), KeyBuilder::new("a").u64(3).finish());
        let a = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1f32, 2.5], &Device::Cpu).unwrap();
        assert_ne!(tensor_key(&a).unwrap(), tensor_key(&b).unwrap());
        assert_eq!(tensor_key(&a).unwrap(), tensor_key(&a.copy().unwrap()).unwrap());
        assert_ne!(tensor_key(&a).unwrap(), tensor_key(&a.reshape((2, 1)).unwrap()).unwrap());
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        // Three 400-byte tensors in a 1000-byte cache.
        let cache = StageCache::new(1000);
        cache.put(k(1), Cached::Sequence(vec![t(100)]));
        cache.put(k(2), Cached::Sequence(vec![t(100)]));
        assert!(cache.get(&k(1)).is_some()); // 1 is now more recent than 2
        cache.put(k(3), Cached::Sequence(vec![t(100)]));
        assert!(cache.get(&k(2)).is_none(), "the least recently used entry is evicted");
        assert!(cache.get(&k(1)).is_some() && cache.get(&k(3)).is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (2, 800, 1));
        // Larger than the whole budget: not stored, nothing evicted.
        cache.put(k(4), Cached::Sequence(vec![t(300)]));
        assert!(cache.get(&k(4)).is_none());
        assert_eq!(cache.stats().entries, 2);
        // Replacing a key does not count its bytes twice.
        cache.put(k(3), Cached::Sequence(vec![t(50)]));
        assert_eq!(cache.stats().bytes, 600);
        let off = StageCache::new(0);
        off.put(k(1), Cached::Sequence(vec![t(1)]));
        assert!(off.get(&k(1)).is_none());
    }
}
