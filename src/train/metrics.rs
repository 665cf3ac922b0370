//! Classification metrics, computed once over a whole split from a
//! confusion matrix (never averaged over batches).
//!
//! Rules, the same as the PyTorch reference model's:
//! - only rows with a gold label count;
//! - a gold label the model does not know (it never appeared in training)
//!   is a gold-only class of its own, one per distinct label: never
//!   predicted, so its F1 is 0, and its rows are errors in accuracy and
//!   false positives of the class predicted;
//! - macro-F1 averages per-class F1 over the classes that occur in gold or
//!   in predictions; a class with neither ("no support") is left out and
//!   listed as excluded; F1 is 0 for a class with no true positive;
//! - weighted F1 weighs each class's F1 by its support, over all labelled
//!   rows;
//! - precision of a class never predicted is reported as 0 and flagged;
//! - in single-label classification micro precision, recall and F1 all
//!   equal accuracy, so only accuracy is reported.

use serde::Serialize;

/// Counts of (gold, predicted) pairs for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    /// Classes the model knows (and can predict).
    classes: usize,
    /// `[classes, classes]`, rows gold, columns predicted.
    counts: Vec<u64>,
    /// Gold labels the model does not know: `unseen_gold[k][p]` counts the
    /// rows of gold class `classes + k` predicted as `p`.
    unseen_gold: Vec<Vec<u64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
    pub predicted: u64,
    /// The class was never predicted: precision is 0 by convention.
    pub never_predicted: bool,
    /// Neither in gold nor in predictions: left out of the macro average.
    pub excluded: bool,
    /// A gold label that never appeared in training: the model cannot
    /// predict it, so its rows are all errors.
    pub unseen: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskScores {
    /// Rows with a gold label (known to the model or not); the classes'
    /// supports add up to it.
    pub labelled: u64,
    /// Rows whose gold label the model does not know (the support of the
    /// classes marked `unseen`).
    pub unknown_labels: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    /// The model's classes, then the unseen gold labels.
    pub classes: Vec<ClassScore>,
    /// Rows gold, columns predicted, in class order (square; the columns of
    /// unseen classes are 0).
    pub confusion: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
            unseen_gold: Vec::new(),
        }
    }

    /// Records one row. `gold` is a class index, `classes + k` for the
    /// `k`-th distinct label the model does not know, or negative for a
    /// missing label.
    pub fn add(&mut self, gold: i32, predicted: usize) {
        let Ok(gold) = usize::try_from(gold) else {
            return;
        };
        match gold.checked_sub(self.classes) {
            None => self.counts[gold * self.classes + predicted] += 1,
            Some(k) => {
                if self.unseen_gold.len() <= k {
                    self.unseen_gold.resize(k + 1, vec![0; self.classes]);
                }
                self.unseen_gold[k][predicted] += 1;
            }
        }
    }

    /// Scores per class and overall. `names` names the classes in index
    /// order, the known ones then the unseen ones; a class without a name
    /// is shown by its index.
    pub fn scores(&self, names: &[String]) -> TaskScores {
        let n = self.classes;
        let all = n + self.unseen_gold.len();
        let confusion: Vec<Vec<u64>> = (0..all)
            .map(|g| {
                let mut row = match g.checked_sub(n) {
                    None => self.counts[g * n..(g + 1) * n].to_vec(),
                    Some(k) => self.unseen_gold[k].clone(),
                };
                row.resize(all, 0);
                row
            })
            .collect();
        let support_of = |c: usize| -> u64 { confusion[c].iter().sum() };
        let predicted_of = |c: usize| -> u64 { confusion.iter().map(|row| row[c]).sum() };
        let labelled: u64 = (0..all).map(support_of).sum();
        let correct: u64 = (0..all).map(|c| confusion[c][c]).sum();
        let unknown: u64 = (n..all).map(support_of).sum();

        let mut classes = Vec::with_capacity(all);
        let (mut f1_sum, mut f1_count, mut weighted) = (0.0, 0usize, 0.0);
        for (c, row) in confusion.iter().enumerate() {
            let tp = row[c];
            let (support, predicted) = (row.iter().sum::<u64>(), predicted_of(c));
            let precision = if predicted == 0 {
                0.0
            } else {
                tp as f64 / predicted as f64
            };
            let recall = if support == 0 {
                0.0
            } else {
                tp as f64 / support as f64
            };
            let f1 = if tp == 0 {
                0.0
            } else {
                2.0 * tp as f64 / (support + predicted) as f64
            };
            let excluded = support == 0 && predicted == 0;
            if !excluded {
                f1_sum += f1;
                f1_count += 1;
            }
            weighted += f1 * support as f64;
            classes.push(ClassScore {
                class: names.get(c).cloned().unwrap_or_else(|| c.to_string()),
                precision,
                recall,
                f1,
                support,
                predicted,
                never_predicted: predicted == 0,
                excluded,
                unseen: c >= n,
            });
        }
        let share = |x: f64, of: u64| if of == 0 { f64::NAN } else { x / of as f64 };
        TaskScores {
            labelled,
            unknown_labels: unknown,
            accuracy: share(correct as f64, labelled),
            macro_f1: share(f1_sum, f1_count as u64),
            weighted_f1: share(weighted, labelled),
            classes,
            confusion,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    /// 8 x A->A, B->A, C->A.
    #[test]
    fn imbalanced_never_predicted_classes() {
        let mut m = Confusion::new(3);
        for _ in 0..8 {
            m.add(0, 0);
        }
        m.add(1, 0);
        m.add(2, 0);
        let s = m.scores(&names(&["A", "B", "C"]));
        assert!(close(s.accuracy, 0.8));
        assert!(close(s.classes[0].precision, 0.8) && close(s.classes[0].recall, 1.0));
        assert!(close(s.classes[0].f1, 0.888889));
        for c in &s.classes[1..] {
            assert_eq!((c.precision, c.recall, c.f1), (0.0, 0.0, 0.0));
            assert!(c.never_predicted && !c.excluded);
        }
        assert!(close(s.macro_f1, 0.296296), "{}", s.macro_f1);
        assert!(close(s.weighted_f1, 0.711111), "{}", s.weighted_f1);
        assert_eq!(
            s.confusion,
            vec![vec![8, 0, 0], vec![1, 0, 0], vec![1, 0, 0]]
        );
    }

    /// gold 0,0,1,1; pred 0,1,0,1: the same whatever the batching.
    #[test]
    fn global_not_batchwise() {
        let mut m = Confusion::new(2);
        for (g, p) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            m.add(g, p);
        }
        let s = m.scores(&names(&["0", "1"]));
        assert!(close(s.classes[1].recall, 0.5) && close(s.classes[1].precision, 0.5));
        assert!(close(s.macro_f1, 0.5) && close(s.accuracy, 0.5));
    }

    /// The tester's case: 23 rows of `a` and 16 of `b`, all right, and one
    /// row of a label the model never saw, predicted `b`.
    #[test]
    fn an_unseen_gold_label_is_a_class_with_f1_zero() {
        let mut m = Confusion::new(2);
        for _ in 0..23 {
            m.add(0, 0);
        }
        for _ in 0..16 {
            m.add(1, 1);
        }
        m.add(2, 1);
        m.add(-1, 0);
        let s = m.scores(&names(&["a", "b", "meh"]));

        assert_eq!((s.labelled, s.unknown_labels), (40, 1));
        let supports: Vec<u64> = s.classes.iter().map(|c| c.support).collect();
        assert_eq!(supports, vec![23, 16, 1]);
        assert!(close(s.accuracy, 39.0 / 40.0));
        // F1 of b: 2 tp / (support + predicted) = 32 / (16 + 17).
        let f1_b = 32.0 / 33.0;
        assert!(
            close(s.macro_f1, (1.0 + f1_b + 0.0) / 3.0),
            "{}",
            s.macro_f1
        );
        assert!(
            close(s.weighted_f1, (23.0 + 16.0 * f1_b) / 40.0),
            "{}",
            s.weighted_f1
        );

        let meh = &s.classes[2];
        assert_eq!(meh.class, "meh");
        assert!(meh.unseen && meh.never_predicted && !meh.excluded);
        assert_eq!((meh.f1, meh.recall), (0.0, 0.0));
        assert!(!s.classes[1].unseen);
        assert_eq!(
            s.confusion,
            vec![vec![23, 0, 0], vec![0, 16, 0], vec![0, 1, 0]]
        );
    }

    /// Known classes a, b, c, d (d absent); unseen x (twice, predicted c)
    /// and y (once, predicted a):
    /// a: tp 3, support 3, predicted 5, F1 6/8;
    /// b: tp 2, support 3, predicted 2, F1 4/5;
    /// c: tp 1, support 1, predicted 3, F1 2/4;
    /// x, y: F1 0; d excluded.
    #[test]
    fn two_unseen_gold_labels_are_two_classes() {
        let mut m = Confusion::new(4);
        let rows = [
            (0, 0, 3),
            (1, 0, 1),
            (1, 1, 2),
            (2, 2, 1),
            (4, 2, 2),
            (5, 0, 1),
            (-1, 1, 4),
        ];
        for (gold, predicted, times) in rows {
            for _ in 0..times {
                m.add(gold, predicted);
            }
        }
        let s = m.scores(&names(&["a", "b", "c", "d", "x", "y"]));

        assert_eq!((s.labelled, s.unknown_labels), (10, 3));
        let supports: Vec<u64> = s.classes.iter().map(|c| c.support).collect();
        assert_eq!(supports, vec![3, 3, 1, 0, 2, 1]);
        assert_eq!(supports.iter().sum::<u64>(), s.labelled);
        let unseen: Vec<bool> = s.classes.iter().map(|c| c.unseen).collect();
        assert_eq!(unseen, vec![false, false, false, false, true, true]);
        assert!(s.classes[3].excluded);
        assert!(close(s.accuracy, 0.6));
        assert!(
            close(s.macro_f1, (0.75 + 0.8 + 0.5) / 5.0),
            "{}",
            s.macro_f1
        );
        let weighted = (0.75 * 3.0 + 0.8 * 3.0 + 0.5) / 10.0;
        assert!(close(s.weighted_f1, weighted), "{}", s.weighted_f1);
        assert!(s.confusion.iter().all(|row| row.len() == 6));
        assert_eq!(s.confusion[4], vec![0, 0, 2, 0, 0, 0]);
    }

    /// Macro and weighted F1 from label strings, as scikit-learn defines
    /// them over the union of gold and predicted labels.
    fn reference_f1(pairs: &[(String, String)]) -> (f64, f64) {
        let mut labels: Vec<&String> = pairs.iter().flat_map(|(g, p)| [g, p]).collect();
        labels.sort();
        labels.dedup();
        let (mut macro_sum, mut weighted_sum) = (0.0, 0.0);
        for label in &labels {
            let count = |keep: &dyn Fn(&(String, String)) -> bool| {
                pairs.iter().filter(|pair| keep(pair)).count() as f64
            };
            let tp = count(&|(g, p)| g == *label && p == *label);
            let false_pos = count(&|(g, p)| g != *label && p == *label);
            let false_neg = count(&|(g, p)| g == *label && p != *label);
            let f1 = if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + false_pos + false_neg)
            };
            macro_sum += f1;
            weighted_sum += f1 * (tp + false_neg);
        }
        (
            macro_sum / labels.len() as f64,
            weighted_sum / pairs.len() as f64,
        )
    }

    #[test]
    fn unseen_labels_match_the_reference_on_random_rows() {
        let known = ["a", "b", "c"];
        let unseen = ["u", "v"];
        let mut rng = crate::rng::Rng::new(17);
        for _ in 0..50 {
            let mut m = Confusion::new(known.len());
            let mut pairs = Vec::new();
            for _ in 0..60 {
                let gold = rng.below(5) as usize;
                let predicted = rng.below(3) as usize;
                m.add(gold as i32, predicted);
                let gold_name = known.iter().chain(&unseen).nth(gold).unwrap();
                pairs.push((gold_name.to_string(), known[predicted].to_string()));
            }
            let s = m.scores(&[]);
            let (macro_f1, weighted_f1) = reference_f1(&pairs);
            assert!(close(s.macro_f1, macro_f1), "{} vs {macro_f1}", s.macro_f1);
            assert!(
                close(s.weighted_f1, weighted_f1),
                "{} vs {weighted_f1}",
                s.weighted_f1
            );
            let supports: u64 = s.classes.iter().map(|c| c.support).sum();
            assert_eq!(supports, 60);
        }
    }

    #[test]
    fn class_without_support_or_predictions_is_excluded() {
        let mut m = Confusion::new(3);
        m.add(0, 0);
        m.add(1, 0);
        let s = m.scores(&names(&["a", "b", "c"]));
        assert!(s.classes[2].excluded && !s.classes[1].excluded);
        assert!(close(s.macro_f1, (2.0 / 3.0) / 2.0));
    }
}
