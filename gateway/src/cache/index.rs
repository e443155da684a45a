//! The vectors of one scope, stored contiguously so a lookup is one linear pass over memory
//! (the exact nearest-neighbour scan), with O(1) insertion and removal.

use std::collections::HashMap;

use super::embed::cosine;
use super::Key;

/// One scope's entries that have an embedding.
#[derive(Debug, Default)]
pub struct ScopeIndex {
    keys: Vec<Key>,
    vectors: Vec<f32>,
    pos: HashMap<Key, usize>,
    dim: usize,
}

impl ScopeIndex {
    /// Adds or replaces `key`'s vector.
    pub fn add(&mut self, key: Key, v: &[f32]) {
        if self.dim == 0 {
            self.dim = v.len();
        }
        if v.len() != self.dim {
            return;
        }
        match self.pos.get(&key) {
            Some(&i) => self.vectors[i * self.dim..(i + 1) * self.dim].copy_from_slice(v),
            None => {
                self.pos.insert(key, self.keys.len());
                self.keys.push(key);
                self.vectors.extend_from_slice(v);
            }
        }
    }

    /// Removes `key` (the last entry takes its place).
    pub fn remove(&mut self, key: &Key) {
        let Some(i) = self.pos.remove(key) else {
            return;
        };
        let last = self.keys.len() - 1;
        if i != last {
            let moved = self.keys[last];
            self.keys[i] = moved;
            self.pos.insert(moved, i);
            let (head, tail) = self.vectors.split_at_mut(last * self.dim);
            head[i * self.dim..(i + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
        }
        self.keys.pop();
        self.vectors.truncate(last * self.dim);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every entry at or above `threshold`, most similar first.
    pub fn above(&self, v: &[f32], threshold: f32) -> Vec<(f32, Key)> {
        if v.len() != self.dim {
            return Vec::new();
        }
        let mut out: Vec<(f32, Key)> = self
            .vectors
            .chunks_exact(self.dim)
            .zip(&self.keys)
            .filter_map(|(e, k)| {
                let s = cosine(v, e);
                (s >= threshold).then_some((s, *k))
            })
            .collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_keeps_the_others_findable() {
        let mut ix = ScopeIndex::default();
        let k = |n: u8| [n; 32];
        ix.add(k(1), &[1.0, 0.0]);
        ix.add(k(2), &[0.0, 1.0]);
        ix.add(k(3), &[0.6, 0.8]);
        ix.remove(&k(1));
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.above(&[0.0, 1.0], 0.7), vec![(1.0, k(2)), (0.8, k(3))]);
        ix.add(k(3), &[1.0, 0.0]);
        assert_eq!(ix.above(&[1.0, 0.0], 0.9), vec![(1.0, k(3))]);
        ix.remove(&k(2));
        ix.remove(&k(3));
        assert!(ix.is_empty());
    }
}
