//! Per-class loss weights: the loss is the weighted mean of the rows'
//! cross-entropies (PyTorch's `CrossEntropyLoss(weight=...)`), and the
//! command line turns `balanced` and explicit weights into those weights.

mod common;

use common::{case, polyhead, scratch};
use polyhead::backend::cpu::CpuBackend;
use polyhead::model::init::initial_params;
use polyhead::model::network::{HostBatch, Network, Sum};
use polyhead::model::{Dims, HeadDims, Shape};
use polyhead::rng::Rng;

#[test]
fn weighted_loss_is_the_weighted_mean_of_cross_entropies() {
    let shape = Shape::new(Dims {
        vocab: 30,
        embed: 8,
        filters: 6,
        kernel: 3,
        heads: vec![
            HeadDims {
                hidden: 5,
                classes: 3,
            },
            HeadDims {
                hidden: 4,
                classes: 2,
            },
        ],
    });
    let mut rng = Rng::new(5);
    let params = initial_params(&shape, &mut rng);
    let mut net = Network::new(CpuBackend::new(), shape.clone(), &params, 8, 16).unwrap();
    let weights = [0.5f32, 2.0, 1.5, 3.0, 0.25];
    net.set_class_weights(&weights).unwrap();

    let texts: Vec<Vec<i32>> = (0..6)
        .map(|n| (0..n + 2).map(|_| 2 + rng.below(28) as i32).collect())
        .collect();
    let mut batch = HostBatch::default();
    batch.fill(texts.iter().map(Vec::as_slice), 3);
    let labels = [[0, 2, -1, 1, 2, 0], [1, -1, 0, 0, 1, -1]];
    batch.labels = labels.concat();
    let logits = net.logits(&batch).unwrap().to_vec();
    let losses = net.backward(&batch, &[1.0, 1.0], &mut Sum, None).unwrap();

    for (task, row_labels) in labels.iter().enumerate() {
        let (offset, classes) = (shape.class_offset(task), shape.dims.heads[task].classes);
        let (mut sum, mut weight_sum) = (0.0f64, 0.0f64);
        for (b, &y) in row_labels.iter().enumerate().filter(|(_, &y)| y >= 0) {
            let o: Vec<f64> = (0..classes)
                .map(|c| logits[b * 5 + offset + c] as f64)
                .collect();
            let max = o.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = o.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            let w = weights[offset + y as usize] as f64;
            sum += w * (log_sum - (o[y as usize] - max));
            weight_sum += w;
        }
        let got = losses.means()[task].unwrap();
        let want = sum / weight_sum;
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "task {task}: {got} vs {want}"
        );
    }
}

#[test]
fn class_weight_flags() {
    let dir = scratch("class-weight");
    let data = case("case-01").join("train.tsv");
    let data = data.to_str().unwrap();
    for spec in ["balanced", "sentiment=balanced", "topic:sports=2"] {
        polyhead(
            &dir,
            &[
                "train",
                "--data",
                data,
                "--epochs",
                "1",
                "--class-weight",
                spec,
            ],
        )
        .ok();
    }
    for (spec, needle) in [
        ("topic:weather=2", "task topic has no class \"weather\""),
        ("mood=balanced", "no task \"mood\""),
        ("topic:sports=-1", "finite number >= 0"),
        ("heavy", "expected balanced"),
    ] {
        let run = polyhead(&dir, &["train", "--data", data, "--class-weight", spec]).fails(2);
        assert!(run.stderr.contains(needle), "{spec}: {}", run.stderr);
    }
}
