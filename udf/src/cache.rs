//! A bounded in-memory score cache. Within one scorer a score depends only on the
//! conversation, so the key is its content hash ([`skyscore_core::conversation_key`]). It makes a
//! query that evaluates `skywork_score` twice on the same rows (Filter and Projection, or a
//! pushed-down filter in the scan) run the model once, and scores duplicate rows once.

use std::collections::HashMap;

use skyscore_core::ConversationKey;

/// Bounded by `capacity` entries with two generations: when the young one fills up, the old
/// one is dropped. Recently used scores (the rows of the batch being filtered and projected)
/// always survive; memory stays at most ~2 × capacity entries.
#[derive(Debug)]
pub struct ScoreCache {
    young: HashMap<ConversationKey, f32>,
    old: HashMap<ConversationKey, f32>,
    capacity: usize,
}

impl ScoreCache {
    pub fn new(capacity: usize) -> Self {
        Self { young: HashMap::new(), old: HashMap::new(), capacity: capacity.max(1) }
    }

    pub fn get(&mut self, key: &ConversationKey) -> Option<f32> {
        if let Some(v) = self.young.get(key) {
            return Some(*v);
        }
        let v = self.old.remove(key)?;
        self.insert(*key, v);
        Some(v)
    }

    pub fn insert(&mut self, key: ConversationKey, score: f32) {
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
    fn bounded_and_keeps_recent_entries() {
        let mut c = ScoreCache::new(2);
        for k in 0..10u128 {
            c.insert(k, k as f32);
        }
        assert!(c.len() <= 4);
        assert_eq!(c.get(&9), Some(9.0));
        assert_eq!(c.get(&0), None);
    }

    #[test]
    fn an_old_entry_that_is_read_survives_the_next_turnover() {
        let mut c = ScoreCache::new(2);
        c.insert(1, 1.0);
        c.insert(2, 2.0);
        c.insert(3, 3.0); // 1 and 2 are now old
        assert_eq!(c.get(&1), Some(1.0)); // promoted back into the young generation
        c.insert(4, 4.0); // young (3, 1) turns over: 1 survives in the old generation
        assert_eq!(c.get(&1), Some(1.0));
        assert_eq!(c.get(&2), None);
    }
}
