//! The vectors of one scope and their nearest-neighbour search.
//!
//! Vectors are stored contiguously, so a small scope is searched by one linear pass over
//! memory (exact). A scope of [`ANN_MIN`] entries or more also gets an HNSW graph
//! ([`instant_distance`]: small, pure Rust, no native code; its graphs are immutable, which
//! fits here): built on a background thread from a snapshot of the vectors, and rebuilt once
//! the entries added since exceed a tenth of the scope (until then, or while more are newer,
//! the exact scan serves). A search asks the graph for the nearest
//! entries of the snapshot and scans the entries added since exactly, so a fresh entry is
//! never missed; removed entries are skipped. Approximate search can miss a neighbour the
//! exact scan would find: that costs a cache miss, never a wrong answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use instant_distance::{Builder, HnswMap, Search};

use super::embed::cosine;
use super::Key;

/// Entries from which a scope gets an HNSW graph (measured: at 10,000 the exact scan is
/// still the faster, at 100,000 the graph is five times faster).
pub const ANN_MIN: usize = 32_768;
/// Nearest entries asked of the graph per search.
const ANN_K: usize = 16;

/// A unit vector as the graph sees it.
#[derive(Clone, Debug)]
struct Vector(Arc<[f32]>);

impl instant_distance::Point for Vector {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - cosine(&self.0, &other.0)
    }
}

type Graph = HnswMap<Vector, Key>;

/// One scope's entries that have an embedding.
pub struct ScopeIndex {
    ann_min: usize,
    keys: Vec<Key>,
    vectors: Vec<f32>,
    pos: HashMap<Key, usize>,
    dim: usize,
    graph: Option<Arc<Graph>>,
    /// Added since the graph's snapshot was taken (searched exactly).
    fresh: HashSet<Key>,
    /// Added before the snapshot being built was taken, after the current graph's.
    pending: HashSet<Key>,
    /// A graph being built, delivered here by its thread.
    building: Option<Arc<Mutex<Option<Graph>>>>,
}

impl std::fmt::Debug for ScopeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeIndex")
            .field("len", &self.keys.len())
            .field("graph", &self.graph.is_some())
            .finish()
    }
}

impl Default for ScopeIndex {
    fn default() -> Self {
        Self::with_ann_min(ANN_MIN)
    }
}

impl ScopeIndex {
    /// An index that gets a graph from `ann_min` entries.
    pub fn with_ann_min(ann_min: usize) -> Self {
        Self {
            ann_min,
            keys: Vec::new(),
            vectors: Vec::new(),
            pos: HashMap::new(),
            dim: 0,
            graph: None,
            fresh: HashSet::new(),
            pending: HashSet::new(),
            building: None,
        }
    }

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
        self.fresh.insert(key);
        self.maintain();
    }

    /// Removes `key` (the last entry takes its place).
    pub fn remove(&mut self, key: &Key) {
        let Some(i) = self.pos.remove(key) else {
            return;
        };
        self.fresh.remove(key);
        self.pending.remove(key);
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
        if self.keys.len() < self.ann_min / 2 {
            self.graph = None;
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether an HNSW graph serves searches (it does while at most a tenth of the entries
    /// are newer than it; more, and the exact scan is the faster).
    pub fn has_graph(&self) -> bool {
        self.graph.is_some() && self.lag() <= self.rebuild_after()
    }

    /// Entries newer than the graph.
    pub fn lag(&self) -> usize {
        self.fresh.len() + self.pending.len()
    }

    fn rebuild_after(&self) -> usize {
        (self.keys.len() / 10).max(256)
    }

    /// Installs a finished graph; starts a build when the scope is large and the graph
    /// missing or stale (also done on every add and search).
    pub fn maintain(&mut self) {
        if let Some(slot) = &self.building {
            let done = slot.try_lock().ok().and_then(|mut g| g.take());
            if let Some(g) = done {
                self.graph = Some(Arc::new(g));
                self.pending.clear();
                self.building = None;
            }
        }
        let stale = match &self.graph {
            None => self.keys.len() >= self.ann_min,
            Some(_) => self.fresh.len() > self.rebuild_after(),
        };
        if !stale || self.building.is_some() {
            return;
        }
        // Snapshot: everything now held; what is added from now on stays exactly searched.
        let points: Vec<Vector> = self
            .vectors
            .chunks_exact(self.dim)
            .map(|c| Vector(c.into()))
            .collect();
        let values = self.keys.clone();
        self.pending.extend(self.fresh.drain());
        let slot: Arc<Mutex<Option<Graph>>> = Arc::default();
        self.building = Some(slot.clone());
        // One core at most: the build must not starve the requests being served.
        let spawned = std::thread::Builder::new()
            .name("cache-ann".into())
            .spawn(move || {
                // A smaller construction beam than the default 100: builds take minutes at
                // 100,000 entries on one core, and a missed neighbour only costs a miss.
                let build = move || {
                    Builder::default()
                        .ef_construction(40)
                        .seed(7)
                        .build(points, values)
                };
                let g = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(pool) => pool.install(build),
                    Err(_) => build(),
                };
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(g);
            });
        if spawned.is_err() {
            self.building = None;
        }
    }

    /// Every entry at or above `threshold` among the nearest, most similar first.
    pub fn above(&mut self, v: &[f32], threshold: f32) -> Vec<(f32, Key)> {
        if v.len() != self.dim {
            return Vec::new();
        }
        self.maintain();
        let graph = self
            .graph
            .as_ref()
            .filter(|_| self.lag() <= self.rebuild_after());
        let mut out: Vec<(f32, Key)> = match graph {
            None => self
                .vectors
                .chunks_exact(self.dim)
                .zip(&self.keys)
                .filter_map(|(e, k)| {
                    let s = cosine(v, e);
                    (s >= threshold).then_some((s, *k))
                })
                .collect(),
            Some(g) => {
                let mut search = Search::default();
                let q = Vector(v.into());
                let from_graph = g
                    .search(&q, &mut search)
                    .take(ANN_K)
                    .map(|item| (1.0 - item.distance, *item.value))
                    // Removed since, or replaced by a newer vector searched below.
                    .filter(|(_, k)| {
                        self.pos.contains_key(k)
                            && !self.fresh.contains(k)
                            && !self.pending.contains(k)
                    });
                let recent = self.fresh.iter().chain(&self.pending).filter_map(|k| {
                    let i = *self.pos.get(k)?;
                    Some((
                        cosine(v, &self.vectors[i * self.dim..(i + 1) * self.dim]),
                        *k,
                    ))
                });
                from_graph
                    .chain(recent)
                    .filter(|(s, _)| *s >= threshold)
                    .collect()
            }
        };
        out.sort_by(|a, b| b.0.total_cmp(&a.0));
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
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

    /// A unit vector of `dim` from a seed (xorshift).
    pub(in crate::cache) fn unit(seed: &mut u64, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    #[test]
    fn a_large_scope_gets_a_graph_and_still_finds_old_and_fresh_entries() {
        let dim = 32;
        let mut seed = 42u64;
        let mut ix = ScopeIndex::with_ann_min(600);
        let mut all = Vec::new();
        for i in 0..600u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            let v = unit(&mut seed, dim);
            ix.add(k, &v);
            all.push((k, v));
        }
        let start = std::time::Instant::now();
        while !ix.has_graph() {
            assert!(start.elapsed().as_secs() < 60, "the graph was never built");
            std::thread::sleep(std::time::Duration::from_millis(20));
            ix.maintain();
        }
        // Entries of the snapshot are found through the graph.
        let mut found = 0;
        for (k, v) in all.iter().step_by(13) {
            if ix.above(v, 0.999).first().map(|x| x.1) == Some(*k) {
                found += 1;
            }
        }
        let asked = all.iter().step_by(13).count();
        assert!(found * 100 >= asked * 95, "recall {found}/{asked}");
        // A fresh entry is found exactly; a removed one never comes back.
        let fresh = unit(&mut seed, dim);
        ix.add([255; 32], &fresh);
        assert_eq!(ix.above(&fresh, 0.999)[0].1, [255; 32]);
        let (gone, gone_v) = all[5].clone();
        ix.remove(&gone);
        assert!(ix.above(&gone_v, 0.999).iter().all(|(_, k)| *k != gone));
    }
}
