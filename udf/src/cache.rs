//! A content-addressed score cache. Within one scorer (one model, template, max_length and
//! truncation side) a score depends only on the conversation, so the key is a 128-bit hash of
//! the turns. It makes a query that evaluates `skywork_score` twice on the same rows (Filter
//! and Projection, or a pushed-down filter in the scan) run the model once, and scores
//! duplicate rows once.

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3Default;

use crate::scorer::ChatTurn;

pub type CacheKey = u128;

/// Hash of a conversation; lengths are hashed too, so turn boundaries cannot shift.
pub fn cache_key(turns: &[ChatTurn<'_>]) -> CacheKey {
    let mut h = Xxh3Default::new();
    h.update(&(turns.len() as u64).to_le_bytes());
    for t in turns {
        h.update(&(t.role.len() as u64).to_le_bytes());
        h.update(t.role.as_bytes());
        h.update(&(t.content.len() as u64).to_le_bytes());
        h.update(t.content.as_bytes());
    }
    h.digest128()
}

/// Bounded by `capacity` entries with two generations: when the young one fills up, the old
/// one is dropped. Recently used scores (the rows of the batch being filtered and projected)
/// always survive; memory stays at most ~2 × capacity entries.
#[derive(Debug)]
pub struct ScoreCache {
    young: HashMap<CacheKey, f32>,
    old: HashMap<CacheKey, f32>,
    capacity: usize,
}

impl ScoreCache {
    pub fn new(capacity: usize) -> Self {
        Self { young: HashMap::new(), old: HashMap::new(), capacity: capacity.max(1) }
    }

    pub fn get(&mut self, key: &CacheKey) -> Option<f32> {
        if let Some(v) = self.young.get(key) {
            return Some(*v);
        }
        let v = self.old.remove(key)?;
        self.insert(*key, v);
        Some(v)
    }

    pub fn insert(&mut self, key: CacheKey, score: f32) {
        if self.young.len() >= self.capacity {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, score);
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_turn_boundaries() {
        let a = [ChatTurn::new("user", "ab"), ChatTurn::new("assistant", "c")];
        let b = [ChatTurn::new("user", "a"), ChatTurn::new("assistant", "bc")];
        assert_ne!(cache_key(&a), cache_key(&b));
        assert_eq!(cache_key(&a), cache_key(&a.clone()));
    }

    #[test]
    fn bounded_and_keeps_recent_entries() {
        let mut c = ScoreCache::new(2);
        for k in 0..10u128 {
            c.insert(k, k as f32);
        }
        assert!(c.len() <= 4);
        assert_eq!(c.get(&9), Some(9.0));
        assert_eq!(c.get(&0), None);
    }
}
