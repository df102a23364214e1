//! Nearest-neighbour search by cosine similarity over a set of example
//! vectors, through an inverted index: a query only touches the examples
//! that share a feature with it.

use rustc_hash::FxHashMap;

use crate::features::SparseVec;

/// Example vectors, each tagged with a value (the pattern it belongs to).
#[derive(Debug, Clone, Default)]
pub struct Neighbours<T> {
    tags: Vec<T>,
    postings: FxHashMap<u32, Vec<(u32, f32)>>,
}

impl<T: Copy> Neighbours<T> {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            tags: Vec::new(),
            postings: FxHashMap::default(),
        }
    }

    /// Adds a unit vector with its tag.
    pub fn insert(&mut self, x: &SparseVec, tag: T) {
        let id = self.tags.len() as u32;
        self.tags.push(tag);
        for (f, v) in x.iter() {
            self.postings.entry(f as u32).or_default().push((id, v));
        }
    }

    /// Number of examples held.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether no example is held.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The most similar example whose tag passes `keep` and whose index
    /// passes `skip` negated, as (tag, cosine), or `None` if none shares a
    /// feature with `x`. `scratch` is reused between calls to avoid an
    /// allocation per query.
    pub fn nearest(
        &self,
        x: &SparseVec,
        keep: impl Fn(T) -> bool,
        skip: impl Fn(usize) -> bool,
        scratch: &mut Vec<f32>,
    ) -> Option<(T, f32)> {
        scratch.clear();
        scratch.resize(self.tags.len(), 0.0);
        for (f, v) in x.iter() {
            if let Some(list) = self.postings.get(&(f as u32)) {
                for &(id, w) in list {
                    scratch[id as usize] += v * w;
                }
            }
        }
        let mut best: Option<(T, f32)> = None;
        for (id, &sim) in scratch.iter().enumerate() {
            if sim > 0.0 && best.is_none_or(|(_, b)| sim > b) && !skip(id) && keep(self.tags[id]) {
                best = Some((self.tags[id], sim));
            }
        }
        best
    }

    /// Approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.tags.capacity() * std::mem::size_of::<T>()
            + self.postings.capacity() * (4 + 24 + 1)
            + self
                .postings
                .values()
                .map(|l| l.capacity() * 8)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_most_similar_allowed_example() {
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let mut index = Neighbours::new();
        index.insert(
            &SparseVec {
                idx: vec![0, 1],
                val: vec![s, s],
            },
            'a',
        );
        index.insert(
            &SparseVec {
                idx: vec![0],
                val: vec![1.0],
            },
            'b',
        );
        let q = SparseVec {
            idx: vec![0],
            val: vec![1.0],
        };
        let mut scratch = Vec::new();
        assert_eq!(
            index.nearest(&q, |_| true, |_| false, &mut scratch),
            Some(('b', 1.0))
        );
        assert_eq!(
            index.nearest(&q, |t| t != 'b', |_| false, &mut scratch),
            Some(('a', s))
        );
        assert_eq!(
            index.nearest(&q, |_| true, |id| id == 1, &mut scratch),
            Some(('a', s))
        );
        let far = SparseVec {
            idx: vec![9],
            val: vec![1.0],
        };
        assert_eq!(index.nearest(&far, |_| true, |_| false, &mut scratch), None);
    }
}
