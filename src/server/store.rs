//! Bounded, expiring maps for what the server holds between requests (uploaded pictures, result
//! files): each entry counts its bytes against a budget and expires after a time to live; the
//! oldest go first when the budget is exceeded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A random 128-bit id in lowercase hex: not guessable, never a path.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` has the shape of an id (so that nothing else is ever looked up).
pub fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

struct Entry<T> {
    value: T,
    bytes: usize,
    created: Instant,
}

pub struct Store<T> {
    entries: HashMap<String, Entry<T>>,
    bytes: usize,
    budget: usize,
    ttl: Duration,
}

impl<T: Clone> Store<T> {
    pub fn new(budget: usize, ttl: Duration) -> Self {
        Self { entries: HashMap::new(), bytes: 0, budget, ttl }
    }

    /// Stores `value` under a new id. Expired entries go first, then the oldest until the new
    /// one fits; `None` when it is larger than the whole budget.
    pub fn insert(&mut self, value: T, bytes: usize) -> Option<String> {
        if bytes > self.budget {
            return None;
        }
        self.sweep();
        while self.bytes + bytes > self.budget {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.created).map(|(k, _)| k.clone()) else {
                break;
            };
            self.remove(&oldest);
        }
        let id = new_id();
        self.entries.insert(id.clone(), Entry { value, bytes, created: Instant::now() });
        self.bytes += bytes;
        Some(id)
    }

    pub fn get(&self, id: &str) -> Option<T> {
        self.entries.get(id).filter(|e| e.created.elapsed() < self.ttl).map(|e| e.value.clone())
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id) {
            self.bytes -= e.bytes;
        }
    }

    /// Drops expired entries.
    pub fn sweep(&mut self) {
        let ttl = self.ttl;
        let expired: Vec<String> =
            self.entries.iter().filter(|(_, e)| e.created.elapsed() >= ttl).map(|(k, _)| k.clone()).collect();
        for id in expired {
            self.remove(&id);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_ttl_and_ids() {
        let mut s: Store<u32> = Store::new(100, Duration::from_secs(60));
        let a = s.insert(1, 60).unwrap();
        assert!(is_id(&a) && !is_id("../etc/passwd") && !is_id(&a.to_uppercase()));
        let b = s.insert(2, 30).unwrap();
        let c = s.insert(3, 30).unwrap(); // 120 > 100: the oldest (a) goes
        assert_eq!((s.get(&a), s.get(&b), s.get(&c)), (None, Some(2), Some(3)));
        assert_eq!(s.bytes(), 60);
        assert!(s.insert(4, 101).is_none());
        let mut short: Store<u32> = Store::new(100, Duration::from_millis(0));
        let d = short.insert(5, 1).unwrap();
        assert_eq!(short.get(&d), None);
        short.sweep();
        assert_eq!(short.bytes(), 0);
    }
}
