//! Classification metrics, computed once over a whole split from a
//! confusion matrix (never averaged over batches).
//!
//! Rules, the same as the PyTorch reference model's:
//! - only rows with a gold label count;
//! - a gold label the model does not know (it never appeared in training)
//!   counts as an error in accuracy and as a false positive of the class
//!   predicted, but is not a class of its own in any table or average;
//! - macro-F1 averages per-class F1 over the classes that occur in gold or
//!   in predictions; a class with neither ("no support") is left out and
//!   listed as excluded; F1 is 0 for a class with no true positive;
//! - precision of a class never predicted is reported as 0 and flagged;
//! - in single-label classification micro precision, recall and F1 all
//!   equal accuracy, so only accuracy is reported.

use serde::Serialize;

/// Counts of (gold, predicted) pairs for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    /// `[classes, classes]`, rows gold, columns predicted.
    counts: Vec<u64>,
    /// Predictions for rows whose gold label the model does not know, per
    /// predicted class.
    unknown_gold: Vec<u64>,
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
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskScores {
    /// Rows with a gold label (known to the model or not).
    pub labelled: u64,
    /// Rows whose gold label the model does not know.
    pub unknown_labels: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    pub classes: Vec<ClassScore>,
    /// Rows gold, columns predicted, in class order.
    pub confusion: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
            unknown_gold: vec![0; classes],
        }
    }

    /// Records one row. `gold` is a class index, `classes` (or more) for a
    /// label the model does not know, or negative for a missing label.
    pub fn add(&mut self, gold: i32, predicted: usize) {
        if gold < 0 {
            return;
        }
        let gold = gold as usize;
        if gold < self.classes {
            self.counts[gold * self.classes + predicted] += 1;
        } else {
            self.unknown_gold[predicted] += 1;
        }
    }

    pub fn scores(&self, names: &[String]) -> TaskScores {
        let n = self.classes;
        let gold_of = |c: usize| -> u64 { self.counts[c * n..(c + 1) * n].iter().sum() };
        let predicted_of = |c: usize| -> u64 {
            (0..n).map(|g| self.counts[g * n + c]).sum::<u64>() + self.unknown_gold[c]
        };
        let correct: u64 = (0..n).map(|c| self.counts[c * n + c]).sum();
        let unknown: u64 = self.unknown_gold.iter().sum();
        let labelled = (0..n).map(gold_of).sum::<u64>() + unknown;

        let mut classes = Vec::with_capacity(n);
        let (mut f1_sum, mut f1_count, mut weighted) = (0.0, 0usize, 0.0);
        for c in 0..n {
            let tp = self.counts[c * n + c];
            let (support, predicted) = (gold_of(c), predicted_of(c));
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
            });
        }
        let known = labelled - unknown;
        TaskScores {
            labelled,
            unknown_labels: unknown,
            accuracy: if labelled == 0 {
                f64::NAN
            } else {
                correct as f64 / labelled as f64
            },
            macro_f1: if f1_count == 0 {
                f64::NAN
            } else {
                f1_sum / f1_count as f64
            },
            weighted_f1: if known == 0 {
                f64::NAN
            } else {
                weighted / known as f64
            },
            classes,
            confusion: (0..n)
                .map(|g| self.counts[g * n..(g + 1) * n].to_vec())
                .collect(),
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

    #[test]
    fn unknown_gold_label_is_an_error_not_a_class() {
        let mut m = Confusion::new(2);
        m.add(0, 0);
        m.add(1, 1);
        m.add(2, 1);
        m.add(-1, 0);
        let s = m.scores(&names(&["a", "b"]));
        assert_eq!((s.labelled, s.unknown_labels), (3, 1));
        assert!(close(s.accuracy, 2.0 / 3.0));
        assert!(close(s.macro_f1, (1.0 + 2.0 / 3.0) / 2.0), "{}", s.macro_f1);
        assert_eq!(s.classes.len(), 2);
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
