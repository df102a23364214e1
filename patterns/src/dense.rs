//! Embedding vectors as extra features: how a question's dense vector (from
//! an embeddings model the caller runs) joins its sparse TF-IDF vector, the
//! approximate nearest-neighbour index over example vectors (HNSW, from the
//! `hnsw_rs` crate), and the leave-one-out calibration of dense similarity.
//!
//! The crate never computes an embedding itself: the caller attaches one to
//! each example ([`crate::Bank::set_vector`]) and passes the question's to
//! [`crate::Model::lookup_embedded`]. A model fitted with vectors
//! ([`crate::Model::fit_embedded`]) is calibrated on its own; the lexical
//! model stays what a caller falls back to when no vector can be had.

use std::sync::Arc;

use hnsw_rs::prelude::{DistCosine, Hnsw};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bank::{Bank, PatternId};
use crate::calibrate::Scored;
use crate::features::SparseVec;
use crate::rng::SplitMix64;

/// The longest embedding accepted, in dimensions: well above any model in
/// use (3,072 for the largest OpenAI one), low enough that a broken
/// endpoint cannot make the bank allocate without bound.
pub const MAX_DIM: usize = 16_384;

/// `v` scaled to unit length, or why it cannot be: it is empty, longer than
/// [`MAX_DIM`], not `dim` long (when given), has a value that is not a
/// finite number, or is all zeros.
pub fn unit(v: &[f32], dim: Option<usize>) -> Result<Vec<f32>, &'static str> {
    if v.is_empty() {
        return Err("it is empty");
    }
    if v.len() > MAX_DIM {
        return Err("it has more than 16384 dimensions");
    }
    if dim.is_some_and(|d| d != v.len()) {
        return Err("its length differs from the other vectors'");
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err("it holds a value that is not a finite number");
    }
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return Err("it is all zeros");
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// Dot product of two vectors of the same length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// How dense vectors join a model's features: appended after the lexical
/// ones, scaled by `weight`, and the whole vector scaled back to unit
/// length, so a dot product is a weighted mix of the lexical cosine and the
/// dense one.
#[derive(Debug, Serialize, Deserialize)]
pub struct DenseFit {
    /// Dimensions of the embeddings.
    pub dim: usize,
    /// The dense block's weight against the lexical block's 1.
    pub weight: f32,
    /// Every example at fit time, tagged with its pattern's id and
    /// creation serial, for the nearest-neighbour matcher.
    pub index: DenseIndex<(PatternId, u64)>,
}

impl DenseFit {
    /// The combined feature vector of a lexical unit vector `x` (possibly
    /// empty) and a dense unit vector `v`; `offset` is the lexical
    /// vocabulary's size, where the dense block starts.
    pub fn combine(&self, x: &SparseVec, v: &[f32], offset: usize) -> SparseVec {
        let lexical = if x.is_empty() { 0.0 } else { 1.0 };
        let scale = 1.0 / (lexical + self.weight * self.weight).sqrt();
        let mut out = SparseVec {
            idx: Vec::with_capacity(x.len() + v.len()),
            val: Vec::with_capacity(x.len() + v.len()),
        };
        for (i, w) in x.iter() {
            out.idx.push(i as u32);
            out.val.push(w * scale);
        }
        for (j, w) in v.iter().enumerate() {
            if *w != 0.0 {
                out.idx.push((offset + j) as u32);
                out.val.push(w * self.weight * scale);
            }
        }
        out
    }
}

/// Every example's vector, in the order [`crate::Model::fit`] visits them
/// (patterns by id, examples oldest first), or `None` when an example has
/// none (the bank is not fully embedded yet) or the bank has no example.
pub fn example_vectors(bank: &Bank) -> Option<(usize, Vec<Arc<[f32]>>)> {
    let mut out = Vec::with_capacity(bank.examples());
    for pattern in bank.patterns() {
        for example in pattern.examples() {
            out.push(example.vector.clone()?);
        }
    }
    let dim = out.first()?.len();
    Some((dim, out))
}

/// An approximate nearest-neighbour index (HNSW) over unit vectors, each
/// with a tag. Built once; a model keeps examples added after its fit in a
/// short list it searches exactly.
pub struct DenseIndex<T> {
    dim: usize,
    tags: Vec<T>,
    vectors: Vec<Arc<[f32]>>,
    hnsw: Option<Hnsw<'static, f32, DistCosine>>,
}

/// Links per node, and the candidate list sizes when building and when
/// searching: the usual HNSW settings for a few hundred thousand vectors of
/// a few hundred dimensions at high recall.
const LINKS: usize = 16;
const EF_BUILD: usize = 200;
const EF_SEARCH: usize = 64;
const LAYERS: usize = 16;

impl<T: Copy> DenseIndex<T> {
    /// An index over `points` (unit vectors of `dim` dimensions). Points
    /// are inserted one at a time, in order, so the same points always give
    /// the same graph.
    pub fn build(dim: usize, points: Vec<(Arc<[f32]>, T)>) -> Self {
        let (vectors, tags): (Vec<_>, Vec<_>) = points.into_iter().unzip();
        let hnsw = (!vectors.is_empty()).then(|| {
            let hnsw = Hnsw::new(LINKS, vectors.len(), LAYERS, EF_BUILD, DistCosine);
            for (id, v) in vectors.iter().enumerate() {
                hnsw.insert_slice((v, id));
            }
            hnsw
        });
        Self {
            dim,
            tags,
            vectors,
            hnsw,
        }
    }

    /// Number of vectors held.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether no vector is held.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The closest vector to the unit vector `q` whose tag passes `keep`,
    /// as (tag, cosine); approximate: the HNSW search may miss the true
    /// nearest, rarely.
    pub fn nearest(&self, q: &[f32], keep: impl Fn(T) -> bool) -> Option<(T, f32)> {
        let hnsw = self.hnsw.as_ref()?;
        if q.len() != self.dim {
            return None;
        }
        let filter = |id: &usize| self.tags.get(*id).is_some_and(|&t| keep(t));
        let found = hnsw.search_filter(q, 1, EF_SEARCH, Some(&filter));
        let best = found.first()?;
        // The index's distance is 1 − cosine; the exact dot product is
        // cheap for one vector and keeps scores on the scale calibration saw.
        let sim = dot(q, &self.vectors[best.d_id]);
        Some((self.tags[best.d_id], sim))
    }

    /// Approximate heap size in bytes: the vectors, the tags and the
    /// graph's links.
    pub fn heap_bytes(&self) -> usize {
        self.vectors.iter().map(|v| v.len() * 4 + 16).sum::<usize>()
            + self.tags.capacity() * std::mem::size_of::<T>()
            + self.len() * LINKS * 2 * 16
    }
}

impl<T> std::fmt::Debug for DenseIndex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseIndex")
            .field("dim", &self.dim)
            .field("len", &self.tags.len())
            .finish()
    }
}

/// What a snapshot of an index holds: its points. The graph is rebuilt
/// when it is read back, the same graph since insertion is deterministic.
#[derive(Serialize, Deserialize)]
struct Points<T> {
    dim: usize,
    tags: Vec<T>,
    vectors: Vec<Arc<[f32]>>,
}

impl<T: Serialize + Clone> Serialize for DenseIndex<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Points {
            dim: self.dim,
            tags: self.tags.clone(),
            vectors: self.vectors.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de> + Copy> Deserialize<'de> for DenseIndex<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let points = Points::<T>::deserialize(deserializer)?;
        if points.tags.len() != points.vectors.len()
            || points.vectors.iter().any(|v| v.len() != points.dim)
        {
            return Err(serde::de::Error::custom(
                "a dense index's tags and vectors do not match",
            ));
        }
        Ok(Self::build(
            points.dim,
            points.vectors.into_iter().zip(points.tags).collect(),
        ))
    }
}

/// Leave-one-out nearest-neighbour predictions by dense cosine, the dense
/// counterpart of the lexical calibration (see `model::neighbour_held_out`):
/// a sample of examples, each matched exactly against a pool of others with
/// itself and its near-duplicates (shared `keys`) left out.
pub fn neighbour_held_out(
    vectors: &[Arc<[f32]>],
    pattern_of: &[PatternId],
    keys: &[Vec<u64>],
    queries: usize,
    seed: u64,
) -> Vec<Scored> {
    let mut order: Vec<usize> = (0..vectors.len()).collect();
    SplitMix64::new(seed ^ 0x6465_6e73_655f_6e6e).shuffle(&mut order);
    order.truncate(queries.saturating_mul(2));
    order
        .iter()
        .take(queries)
        .filter_map(|&i| {
            let mut best: Option<(usize, f32)> = None;
            for &j in &order {
                if j == i || keys[j].iter().any(|k| keys[i].contains(k)) {
                    continue;
                }
                let sim = dot(&vectors[i], &vectors[j]);
                if best.is_none_or(|(_, b)| sim > b) {
                    best = Some((j, sim));
                }
            }
            let (j, sim) = best?;
            Some(Scored {
                score: sim.clamp(0.0, 1.0),
                correct: pattern_of[j] == pattern_of[i],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(values: &[f32]) -> Arc<[f32]> {
        unit(values, None).unwrap().into()
    }

    #[test]
    fn unit_refuses_what_cannot_be_a_direction() {
        assert_eq!(unit(&[], None), Err("it is empty"));
        assert_eq!(unit(&[0.0, 0.0], None), Err("it is all zeros"));
        assert!(unit(&[f32::NAN, 1.0], None).is_err());
        assert!(unit(&[1.0, 2.0], Some(3)).is_err());
        assert!(unit(&vec![1.0; MAX_DIM + 1], None).is_err());
        let u = unit(&[3.0, 4.0], Some(2)).unwrap();
        assert!((u[0] - 0.6).abs() < 1e-6 && (u[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn combined_vectors_have_unit_length_and_mix_both_cosines() {
        let fit = DenseFit {
            dim: 2,
            weight: 1.0,
            index: DenseIndex::build(2, Vec::new()),
        };
        let x = SparseVec {
            idx: vec![0, 3],
            val: vec![0.6, 0.8],
        };
        let a = fit.combine(&x, &v(&[1.0, 0.0]), 5);
        assert_eq!(a.idx, vec![0, 3, 5]);
        assert!((a.dot(&a) - 1.0).abs() < 1e-5);
        // Same words, orthogonal meaning: half the similarity.
        let b = fit.combine(&x, &v(&[0.0, 1.0]), 5);
        assert!((a.dot(&b) - 0.5).abs() < 1e-5);
        // No known word: the dense block alone, still unit length.
        let c = fit.combine(&SparseVec::default(), &v(&[1.0, 1.0]), 5);
        assert!((c.dot(&c) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn the_index_finds_the_nearest_allowed_vector_and_survives_a_snapshot() {
        let points: Vec<(Arc<[f32]>, u32)> = (0..200)
            .map(|i| {
                let angle = i as f32 * 0.03;
                (v(&[angle.cos(), angle.sin(), 0.1]), i)
            })
            .collect();
        let index = DenseIndex::build(3, points);
        let q = unit(&[(1.5f32).cos(), (1.5f32).sin(), 0.1], None).unwrap();
        let (tag, sim) = index.nearest(&q, |_| true).unwrap();
        assert_eq!(tag, 50);
        assert!(sim > 0.999);
        // A filtered-out neighbour is skipped for the next best allowed.
        let (tag, _) = index.nearest(&q, |t| t != 50).unwrap();
        assert!(tag == 49 || tag == 51, "{tag}");
        assert_eq!(index.nearest(&q, |_| false), None);
        // A query of the wrong length finds nothing rather than panicking.
        assert_eq!(index.nearest(&[1.0, 0.0], |_| true), None);

        let json = serde_json::to_string(&index).unwrap();
        let back: DenseIndex<u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.nearest(&q, |_| true).map(|f| f.0), Some(50));
        assert!(
            DenseIndex::<u32>::build(3, Vec::new())
                .nearest(&q, |_| true)
                .is_none()
        );
    }
}
