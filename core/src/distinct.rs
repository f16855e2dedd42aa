//! [`Distinct`]: numbers conversations by their content hash in order of first appearance, so
//! that every distinct conversation runs through the model once however often it repeats. The
//! engine's memo (rows of a chunk) and the UDF service (rows of concurrent SQL requests) both
//! deduplicate with it.

use std::collections::HashMap;

use crate::conversation::ConversationKey;

#[derive(Debug, Default, Clone)]
pub struct Distinct {
    index: HashMap<ConversationKey, usize>,
    keys: Vec<ConversationKey>,
}

impl Distinct {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of `key` (0, 1, ... in order of first appearance) and whether this is its
    /// first appearance.
    pub fn insert(&mut self, key: ConversationKey) -> (usize, bool) {
        let next = self.keys.len();
        let number = *self.index.entry(key).or_insert(next);
        if number == next {
            self.keys.push(key);
        }
        (number, number == next)
    }

    /// The distinct keys, in order of first appearance.
    pub fn keys(&self) -> &[ConversationKey] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_numbered_by_first_appearance() {
        let mut distinct = Distinct::new();
        let numbers: Vec<(usize, bool)> = [7, 3, 7, 9, 3].into_iter().map(|k| distinct.insert(k)).collect();
        assert_eq!(numbers, [(0, true), (1, true), (0, false), (2, true), (1, false)]);
        assert_eq!(distinct.keys(), [7, 3, 9]);
        assert_eq!(distinct.len(), 3);
    }
}
