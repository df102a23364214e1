//! Multinomial logistic regression over sparse TF-IDF vectors, trained by
//! stochastic gradient descent; the classes are the patterns.
//!
//! Weights are stored feature-major (the weights of all classes for one
//! feature side by side), so both scoring and an SGD step walk a few
//! contiguous rows — one per feature of the question — and the compiler can
//! vectorise the inner loop.

use serde::{Deserialize, Serialize};

use crate::features::SparseVec;
use crate::rng::SplitMix64;

/// Hyper-parameters of the classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// L2 regularisation strength (per example).
    pub lambda: f32,
    /// Initial learning rate; [`TrainConfig::schedule`] says how it decays.
    pub eta0: f32,
    /// Passes over the examples of one cross-validation fold. The final
    /// model takes as many SGD steps as a fold model, not as many passes
    /// (see [`crate::Model::fit`]).
    pub epochs: usize,
    /// Seed of the order in which examples are visited.
    pub seed: u64,
    /// How the learning rate changes over the steps.
    pub schedule: Schedule,
}

/// The learning-rate schedule of SGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// `eta0 / (1 + eta0 · lambda · t)`.
    InverseScaling,
    /// From `eta0` down to zero in a straight line over the steps.
    Linear,
}

impl Default for TrainConfig {
    fn default() -> Self {
        // Chosen by five-fold cross-validation inside the Banking77
        // training split (the `banking77` example's `--tune`), among
        // settings that also keep calibration working when classes overlap
        // (the overlap test) and trust none of the example's off-topic
        // questions. With the old `eta0 / (1 + eta0 · lambda · t)` decay the
        // rate hardly fell (lambda is tiny), so SGD ended still hopping
        // around the optimum: a rate falling linearly to zero converges,
        // which raised calibrated coverage from 82.9 % (that decay, eta0 2,
        // 6 epochs) to 85.2 % here. Weaker regularisation (lambda 1e-6) or
        // larger steps (eta0 8) trusted an off-topic question; stronger
        // (1e-5) trusted less (83.1 %).
        Self {
            lambda: 3e-6,
            eta0: 4.0,
            epochs: 10,
            seed: 1,
            schedule: Schedule::Linear,
        }
    }
}

/// The largest gradient entry below which an SGD step is skipped.
const SKIP_GRADIENT: f32 = 1e-3;

/// Gradient entries below this are left out of a sparse update.
const SPARSE_GRADIENT: f32 = 1e-4;

/// A trained linear classifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Linear {
    classes: usize,
    dim: usize,
    /// `weights[f * classes + k]`: weight of feature `f` for class `k`.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Linear {
    /// Trains on examples `xs` with class indices `ys` (each `< classes`)
    /// over feature indices `< dim`, for `steps` SGD steps: whole shuffled
    /// passes over the examples, the last one possibly cut short.
    pub fn train(
        xs: &[&SparseVec],
        ys: &[usize],
        classes: usize,
        dim: usize,
        steps: usize,
        config: &TrainConfig,
    ) -> Self {
        assert_eq!(xs.len(), ys.len(), "one class per example");
        if xs.is_empty() {
            // Nothing to learn from: every score is zero and every class
            // equally likely.
            return Self {
                classes,
                dim,
                weights: vec![0.0; dim * classes],
                bias: vec![0.0; classes],
            };
        }
        let mut weights = vec![0.0f32; dim * classes];
        let mut bias = vec![0.0f32; classes];
        // The L2 shrinkage of every weight at every step is kept as one
        // scale factor (true weight = scale × stored weight), so a step
        // costs only the question's features, not the whole matrix.
        let mut scale = 1.0f32;
        let mut order: Vec<usize> = (0..xs.len()).collect();
        let mut rng = SplitMix64::new(config.seed);
        let mut probs = vec![0.0f32; classes];
        let mut active: Vec<(usize, f32)> = Vec::with_capacity(classes);
        let mut t = 0.0f32;
        let passes = steps.div_ceil(xs.len().max(1));
        for pass in 0..passes {
            rng.shuffle(&mut order);
            let take = if pass + 1 == passes {
                steps - pass * xs.len()
            } else {
                xs.len()
            };
            for &i in &order[..take] {
                let eta = match config.schedule {
                    Schedule::InverseScaling => {
                        config.eta0 / (1.0 + config.eta0 * config.lambda * t)
                    }
                    Schedule::Linear => config.eta0 * (1.0 - t / steps as f32).max(0.0),
                };
                t += 1.0;
                let x = xs[i];
                scores_into(&weights, &bias, classes, scale, x, &mut probs);
                softmax(&mut probs);
                // The gradient of the log loss for the scores is p − onehot.
                probs[ys[i]] -= 1.0;
                scale *= 1.0 - eta * config.lambda;
                if scale < 1e-6 {
                    weights.iter_mut().for_each(|w| *w *= scale);
                    scale = 1.0;
                }
                // An example the model already gets right with near
                // certainty would move no weight noticeably; skipping its
                // update saves most of the work of the later epochs.
                if probs.iter().all(|g| g.abs() < SKIP_GRADIENT) {
                    continue;
                }
                // Most classes get a negligible share of the gradient; when
                // few do not, only their weights are moved, which halves
                // the cost of a fit and changes no prediction measurably.
                active.clear();
                active.extend(
                    probs
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| g.abs() >= SPARSE_GRADIENT)
                        .map(|(k, &g)| (k, g)),
                );
                if active.len() * 4 <= classes {
                    for (f, v) in x.iter() {
                        let step = eta * v / scale;
                        let row = &mut weights[f * classes..(f + 1) * classes];
                        for &(k, g) in &active {
                            row[k] -= step * g;
                        }
                    }
                } else {
                    for (f, v) in x.iter() {
                        let step = eta * v / scale;
                        let row = &mut weights[f * classes..(f + 1) * classes];
                        for (w, g) in row.iter_mut().zip(&probs) {
                            *w -= step * g;
                        }
                    }
                }
                for (b, g) in bias.iter_mut().zip(&probs) {
                    *b -= eta * g;
                }
            }
        }
        weights.iter_mut().for_each(|w| *w *= scale);
        Self {
            classes,
            dim,
            weights,
            bias,
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Class probabilities of `x` into `out` (resized to the class count).
    /// Classes for which `live` is false get probability zero and the
    /// others share the whole mass.
    pub fn probabilities(&self, x: &SparseVec, live: impl Fn(usize) -> bool, out: &mut Vec<f32>) {
        out.resize(self.classes, 0.0);
        scores_into(&self.weights, &self.bias, self.classes, 1.0, x, out);
        for (k, s) in out.iter_mut().enumerate() {
            if !live(k) {
                *s = f32::NEG_INFINITY;
            }
        }
        softmax(out);
    }

    /// Approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        (self.weights.capacity() + self.bias.capacity()) * 4
    }

    /// Number of features the classifier was trained over.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

fn scores_into(
    weights: &[f32],
    bias: &[f32],
    classes: usize,
    scale: f32,
    x: &SparseVec,
    out: &mut [f32],
) {
    out.copy_from_slice(bias);
    for (f, v) in x.iter() {
        let a = v * scale;
        let row = &weights[f * classes..(f + 1) * classes];
        for (s, w) in out.iter_mut().zip(row) {
            *s += a * w;
        }
    }
}

/// In-place softmax; entries of negative infinity become zero. If every
/// entry is negative infinity, all become zero.
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        scores.iter_mut().for_each(|s| *s = 0.0);
        return;
    }
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    scores.iter_mut().for_each(|s| *s /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(idx: &[u32]) -> SparseVec {
        let v = 1.0 / (idx.len() as f32).sqrt();
        SparseVec {
            idx: idx.to_vec(),
            val: vec![v; idx.len()],
        }
    }

    #[test]
    fn no_examples_give_a_uniform_model() {
        let model = Linear::train(&[], &[], 3, 4, 10, &TrainConfig::default());
        let mut p = Vec::new();
        model.probabilities(&unit(&[1]), |_| true, &mut p);
        assert_eq!(p, vec![1.0 / 3.0; 3]);
    }

    #[test]
    fn separable_classes_are_learned() {
        let data = [unit(&[0, 1]), unit(&[0, 2]), unit(&[3, 4]), unit(&[3, 5])];
        let xs: Vec<&SparseVec> = data.iter().collect();
        let model = Linear::train(&xs, &[0, 0, 1, 1], 2, 6, 40, &TrainConfig::default());
        let mut p = Vec::new();
        model.probabilities(&unit(&[0]), |_| true, &mut p);
        assert!(p[0] > 0.8, "{p:?}");
        model.probabilities(&unit(&[3]), |_| true, &mut p);
        assert!(p[1] > 0.8, "{p:?}");
        model.probabilities(&unit(&[0]), |k| k != 0, &mut p);
        assert_eq!(p, vec![0.0, 1.0]);
    }
}
