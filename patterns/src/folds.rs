//! Assigning examples to cross-validation folds: stratified by pattern, with
//! near-duplicate questions kept in one fold so held-out scores are not
//! inflated by a near-copy in the training part.

use rustc_hash::FxHashMap;

use crate::rng::SplitMix64;

/// The fold (`0..folds`) of each example, given each example's class and
/// its near-duplicate keys (see [`crate::text::near_keys`]).
///
/// Within a class, examples that share a key are joined into one group,
/// transitively, but a group never grows beyond the class's share of one
/// fold: a long chain of one-word edits must not carry most of a class into
/// a single fold. Groups are shuffled and each goes whole to the fold with
/// the fewest examples of that class so far, ties going to the fold with
/// the fewest examples overall, so small classes do not all pile into the
/// first fold.
pub fn assign(classes: &[usize], keys: &[Vec<u64>], folds: usize, seed: u64) -> Vec<usize> {
    assert_eq!(classes.len(), keys.len(), "one key list per example");
    let folds = folds.max(1);
    let class_count = classes.iter().copied().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); class_count];
    for (i, &c) in classes.iter().enumerate() {
        members[c].push(i);
    }
    let mut fold_of = vec![0; classes.len()];
    let mut totals = vec![0usize; folds];
    let mut rng = SplitMix64::new(seed);
    for list in &members {
        let cap = list.len().div_ceil(folds).max(1);
        let mut sets = DisjointSets::new(list.len(), cap);
        let mut first: FxHashMap<u64, usize> = FxHashMap::default();
        for (slot, &i) in list.iter().enumerate() {
            for &key in &keys[i] {
                let other = *first.entry(key).or_insert(slot);
                sets.union(slot, other);
            }
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut group_of: FxHashMap<usize, usize> = FxHashMap::default();
        for (slot, &i) in list.iter().enumerate() {
            let root = sets.find(slot);
            let g = *group_of.entry(root).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        rng.shuffle(&mut groups);
        let mut sizes = vec![0usize; folds];
        for group in groups {
            let fold = (0..folds)
                .min_by_key(|&f| (sizes[f], totals[f]))
                .unwrap_or(0);
            sizes[fold] += group.len();
            totals[fold] += group.len();
            for i in group {
                fold_of[i] = fold;
            }
        }
    }
    fold_of
}

/// Union–find with a cap on the size of a set.
struct DisjointSets {
    parent: Vec<usize>,
    size: Vec<usize>,
    cap: usize,
}

impl DisjointSets {
    fn new(n: usize, cap: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
            cap,
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Joins the sets of `a` and `b` unless the result would pass the cap.
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a == b || self.size[a] + self.size[b] > self.cap {
            return;
        }
        let (big, small) = if self.size[a] >= self.size[b] {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[small] = big;
        self.size[big] += self.size[small];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::near_keys;

    #[test]
    fn near_copies_share_a_fold_and_classes_are_spread() {
        let texts = [
            "my new card has not arrived yet",
            "my card has not arrived yet",
            "has not arrived yet my new card",
            "where is the card i ordered",
            "when does a card usually come",
            "card delivery time please",
            "how long do cards take",
            "i am waiting for a card",
            "did you send my card",
            "card still missing after a week",
        ];
        let keys: Vec<Vec<u64>> = texts.iter().map(|t| near_keys(t)).collect();
        let fold_of = assign(&[0; 10], &keys, 3, 1);
        assert_eq!(fold_of[0], fold_of[1]);
        assert_eq!(fold_of[0], fold_of[2]);
        for f in 0..3 {
            let n = fold_of.iter().filter(|&&x| x == f).count();
            assert!((3..=4).contains(&n), "fold {f} has {n}: {fold_of:?}");
        }
    }

    #[test]
    fn small_classes_are_spread_over_all_folds() {
        let classes: Vec<usize> = (0..30).map(|i| i / 3).collect();
        let keys: Vec<Vec<u64>> = (0..30).map(|i| vec![i as u64]).collect();
        let fold_of = assign(&classes, &keys, 5, 1);
        for f in 0..5 {
            assert_eq!(
                fold_of.iter().filter(|&&x| x == f).count(),
                6,
                "{fold_of:?}"
            );
        }
    }

    #[test]
    fn a_chain_of_edits_cannot_fill_one_fold() {
        // Each question differs from the next by one word, so all are
        // transitively near-duplicates; the cap splits the chain.
        let texts: Vec<String> = (0..20)
            .map(|i| format!("w{i} w{} w{} w{} common", i + 1, i + 2, i + 3))
            .collect();
        let keys: Vec<Vec<u64>> = texts.iter().map(|t| near_keys(t)).collect();
        let fold_of = assign(&[0; 20], &keys, 5, 1);
        for f in 0..5 {
            assert_eq!(
                fold_of.iter().filter(|&&x| x == f).count(),
                4,
                "{fold_of:?}"
            );
        }
    }
}
