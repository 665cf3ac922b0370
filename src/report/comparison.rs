//! The multi-task versus single-task comparison as `polyhead compare`
//! writes it (`--json`) and `polyhead report` reads it back.
//!
//! Every figure is a [`Stat`]: the per-seed values, their mean and their
//! sample standard deviation (divisor `n - 1`, so it estimates the spread
//! of a new seed rather than describing only the seeds run). The multi-task
//! and single-task runs of one seed share that seed, so the difference is
//! taken per seed (a paired difference): its mean is the difference of the
//! means, and its spread is usually smaller than either arm's.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How [`Stat::std`] is computed, stated in the JSON beside the figures.
pub const STD_NOTE: &str = "sample standard deviation over seeds (divisor n - 1)";

/// One figure over seeds. `None` stands for an undefined value (a task
/// with no labelled row in the split has no accuracy), written as `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: Option<f64>,
    /// `None` with fewer than two defined values.
    pub std: Option<f64>,
    /// Per seed, in seed order.
    pub values: Vec<Option<f64>>,
}

impl Stat {
    /// Mean and sample standard deviation of the finite `values`.
    pub fn of(values: &[f64]) -> Stat {
        let defined: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let n = defined.len();
        let mean = (n > 0).then(|| defined.iter().sum::<f64>() / n as f64);
        let std = match mean {
            Some(m) if n >= 2 => {
                let squares: f64 = defined.iter().map(|v| (v - m) * (v - m)).sum();
                Some((squares / (n - 1) as f64).sqrt())
            }
            _ => None,
        };
        Stat {
            mean,
            std,
            values: values.iter().map(|v| v.is_finite().then_some(*v)).collect(),
        }
    }

    /// The per-seed differences `a - b` of two paired series.
    pub fn paired_difference(a: &[f64], b: &[f64]) -> Stat {
        let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        Stat::of(&differences)
    }

    /// `0.8123 ± 0.0040`, with `digits` decimals; `n/a` when undefined.
    pub fn display(&self, digits: usize, signed: bool) -> String {
        let Some(mean) = self.mean else {
            return "n/a".to_string();
        };
        let mean = if signed {
            format!("{mean:+.digits$}")
        } else {
            format!("{mean:.digits$}")
        };
        match self.std {
            Some(std) => format!("{mean} ± {std:.digits$}"),
            None => mean,
        }
    }
}

/// The two arms of one metric and their per-seed difference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arms {
    pub multi_task: Stat,
    pub single_task: Stat,
    /// `multi_task - single_task`, per seed.
    pub difference: Stat,
}

impl Arms {
    pub fn new(multi: &[f64], single: &[f64]) -> Arms {
        Arms {
            multi_task: Stat::of(multi),
            single_task: Stat::of(single),
            difference: Stat::paired_difference(multi, single),
        }
    }
}

/// A task's scores on one split, after the final epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitScores {
    pub accuracy: Arms,
    pub macro_f1: Arms,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskComparison {
    pub classes: usize,
    /// Wall time of building and training this task's single-task model,
    /// per-epoch validation included (the same work as the multi-task
    /// model's, so the two times compare).
    pub single_task_seconds: Stat,
    pub valid: SplitScores,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<SplitScores>,
}

impl TaskComparison {
    /// The splits a comparison can hold, in display order.
    pub const SPLITS: [&'static str; 2] = ["validation", "test"];

    /// The scores on one of [`Self::SPLITS`], when that split was scored.
    pub fn split(&self, name: &str) -> Option<&SplitScores> {
        match name {
            "validation" => Some(&self.valid),
            "test" => self.test.as_ref(),
            _ => None,
        }
    }
}

/// The settings both arms were trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub data: Vec<String>,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weighting: String,
    pub embed_dim: usize,
    pub filters: usize,
    pub kernel_size: usize,
    pub hidden: usize,
    pub max_len: usize,
    pub dropout: f64,
    pub backend: String,
}

/// The whole `compare --json` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub settings: Settings,
    pub std: String,
    /// Wall time of building and training the one multi-task model (all
    /// tasks), per-epoch validation included.
    pub multi_task_seconds: Stat,
    /// Per task, in the multi-task model's order.
    pub tasks: Named<TaskComparison>,
}

/// Values keyed by name, kept in order; a JSON object on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Named<T>(pub Vec<(String, T)>);

impl<T> Named<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, T)> {
        self.0.iter()
    }
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for InOrder<T> {
            type Value = Named<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object keyed by name")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Named<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    items.push(entry);
                }
                Ok(Named(items))
            }
        }

        d.deserialize_map(InOrder(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_standard_deviation() {
        let s = Stat::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.mean, Some(5.0));
        // Population variance 4, sample variance 32 / 7.
        assert!((s.std.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn undefined_values_are_left_out() {
        let s = Stat::of(&[f64::NAN, 0.5]);
        assert_eq!((s.mean, s.std), (Some(0.5), None));
        assert_eq!(s.values, vec![None, Some(0.5)]);
        assert_eq!(Stat::of(&[f64::NAN]).display(4, false), "n/a");
    }

    #[test]
    fn paired_difference_is_per_seed() {
        let d = Stat::paired_difference(&[0.75, 0.5, 0.25], &[0.5, 0.5, 0.5]);
        assert_eq!(d.values, vec![Some(0.25), Some(0.0), Some(-0.25)]);
        assert_eq!((d.mean, d.std), (Some(0.0), Some(0.25)));
        assert_eq!(d.display(3, true), "+0.000 ± 0.250");
    }

    #[test]
    fn named_keeps_order_through_json() {
        let named = Named(vec![("zeta".to_string(), 1), ("alpha".to_string(), 2)]);
        let text = serde_json::to_string(&named).unwrap();
        assert_eq!(text, r#"{"zeta":1,"alpha":2}"#);
        let back: Named<i32> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, named);
    }
}
