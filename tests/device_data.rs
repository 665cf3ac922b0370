//! The training set held on the backend: batches gathered there from row
//! indices equal batches built on the host, and dropout masks drawn there
//! follow their counter-based definition.

use polyhead::backend::cpu::CpuBackend;
use polyhead::backend::{dropout_bits, Backend, DeviceTexts, DropoutDraw, DROPOUT_ONE};
use polyhead::data::dataset::Encoded;
use polyhead::model::init::initial_params;
use polyhead::model::network::{HostBatch, Network, Sum};
use polyhead::model::{Dims, HeadDims, Shape};
use polyhead::rng::Rng;

fn shape() -> Shape {
    Shape::new(Dims {
        vocab: 50,
        embed: 8,
        filters: 7,
        kernel: 3,
        heads: vec![
            HeadDims {
                hidden: 6,
                classes: 4,
            },
            HeadDims {
                hidden: 3,
                classes: 2,
            },
        ],
    })
}

/// Random texts of 0 to 19 tokens, some labels missing.
fn random_data(rows: usize, rng: &mut Rng) -> Encoded {
    let mut tokens = Vec::new();
    let mut offsets = vec![0];
    for _ in 0..rows {
        let len = rng.below(20) as usize;
        tokens.extend((0..len).map(|_| 1 + rng.below(49) as i32));
        offsets.push(tokens.len());
    }
    let labels = [4u64, 2]
        .iter()
        .map(|&classes| {
            (0..rows)
                .map(|_| match rng.below(4) {
                    0 => -1,
                    _ => rng.below(classes) as i32,
                })
                .collect()
        })
        .collect();
    Encoded {
        tokens,
        offsets,
        labels,
        lines: (2..rows + 2).collect(),
        sources: vec![0; rows],
    }
}

fn upload(data: &Encoded, tasks: usize) -> DeviceTexts<CpuBackend> {
    DeviceTexts {
        tokens: data.tokens.clone(),
        offsets: data.offsets.iter().map(|&o| o as i32).collect(),
        labels: data.labels.iter().flatten().copied().collect(),
        rows: data.rows(),
        tasks,
    }
}

#[test]
fn gathered_batches_equal_the_texts_they_name() {
    let mut rng = Rng::new(21);
    let data = random_data(30, &mut rng);
    let texts = upload(&data, 2);
    let mut backend = CpuBackend::new();
    // Repeats and any order, as temperature sampling produces.
    let order: Vec<i32> = (0..40).map(|_| rng.below(30) as i32).collect();
    let (start, rows, width) = (5, 9, 20);
    let mut tokens = vec![-7; rows * width];
    let mut lengths = vec![-7; rows];
    let mut labels = vec![-7; 2 * rows];
    backend
        .gather_batch(
            &texts,
            &order,
            start,
            rows,
            width,
            &mut tokens,
            &mut lengths,
            &mut labels,
        )
        .unwrap();

    for b in 0..rows {
        let r = order[start + b] as usize;
        let text = data.text(r);
        assert_eq!(lengths[b] as usize, text.len(), "length of row {b}");
        assert_eq!(
            &tokens[b * width..][..text.len()],
            text,
            "tokens of row {b}"
        );
        assert!(
            tokens[b * width + text.len()..(b + 1) * width]
                .iter()
                .all(|&t| t == 0),
            "padding of row {b}"
        );
        for task in 0..2 {
            assert_eq!(
                labels[task * rows + b],
                data.labels[task][r],
                "label {task}, row {b}"
            );
        }
    }
}

#[test]
fn a_gather_past_the_data_or_the_width_is_an_error() {
    let data = random_data(10, &mut Rng::new(3));
    let texts = upload(&data, 2);
    let mut backend = CpuBackend::new();
    let (mut tokens, mut lengths, mut labels) = (vec![0; 200], vec![0; 10], vec![0; 20]);
    let mut gather = |order: &[i32], width: usize| {
        backend.gather_batch(
            &texts,
            &order.to_vec(),
            0,
            order.len(),
            width,
            &mut tokens,
            &mut lengths,
            &mut labels,
        )
    };
    assert!(gather(&[0, 10], 20).is_err(), "row 10 of 10");
    assert!(gather(&[-1], 20).is_err(), "a negative row");
    let longest = (0..10).max_by_key(|&r| data.text(r).len()).unwrap();
    let too_narrow = data.text(longest).len() - 1;
    assert!(
        gather(&[longest as i32], too_narrow).is_err(),
        "a text wider than the batch"
    );
    assert!(gather(&[longest as i32], too_narrow + 1).is_ok());
}

/// `dropout_bits(key, j)` is the top 24 bits of the `(j + 1)`-th output of
/// SplitMix64 started at `key`: the same generator as the crate's `Rng`.
#[test]
fn dropout_bits_are_splitmix64_outputs() {
    for key in [0u64, 1, 0xdead_beef, u64::MAX] {
        let mut rng = Rng::new(key ^ 0x9e37_79b9_7f4a_7c15);
        for j in 0..2000 {
            assert_eq!(
                dropout_bits(key, j),
                (rng.next_u64() >> 40) as u32,
                "key {key}, j {j}"
            );
        }
    }
}

#[test]
fn dropout_masks_drop_the_asked_share_and_scale_the_rest() {
    let mut backend = CpuBackend::new();
    let len = 100_000;
    for rate in [0.1f32, 0.5, 0.9] {
        let draw = DropoutDraw::new(0x5eed ^ rate.to_bits() as u64, rate);
        assert_eq!(draw.threshold, (rate as f64 * DROPOUT_ONE as f64) as u32);
        let mut mask = vec![f32::NAN; len + 3];
        backend.dropout_mask(&mut mask, len, &draw).unwrap();
        assert!(mask[len..].iter().all(|v| v.is_nan()), "wrote past len");
        let dropped = mask[..len].iter().filter(|&&v| v == 0.0).count();
        assert!(
            mask[..len]
                .iter()
                .all(|&v| v == 0.0 || v == 1.0 / (1.0 - rate)),
            "values other than 0 and 1 / (1 - rate)"
        );
        let share = dropped as f64 / len as f64;
        // Binomial standard deviation is at most 0.0016 here; 5 of them.
        assert!(
            (share - rate as f64).abs() < 0.008,
            "rate {rate}: dropped {share}"
        );
        for (j, &v) in mask[..len].iter().enumerate().step_by(997) {
            assert_eq!(v, draw.mask_value(j as u64), "element {j}");
        }
    }
    let a = DropoutDraw::new(1, 0.5);
    let b = DropoutDraw::new(2, 0.5);
    let differ = (0..1000)
        .filter(|&j| a.mask_value(j) != b.mask_value(j))
        .count();
    assert!(
        differ > 300,
        "masks of two keys agree on {} of 1000",
        1000 - differ
    );
}

/// A step on rows gathered on the backend gives the same losses, gradient
/// bits and parameters as the same rows built into a host batch, with and
/// without dropout.
#[test]
fn a_step_on_gathered_rows_equals_a_step_on_a_host_batch() {
    let shape = shape();
    let mut rng = Rng::new(8);
    let data = random_data(50, &mut rng);
    let params = initial_params(&shape, &mut Rng::new(2));
    let order: Vec<usize> = (0..24).map(|_| rng.below(50) as usize).collect();
    let (start, rows) = (6, 12);
    let chunk = &order[start..start + rows];

    for dropout in [None, Some(DropoutDraw::new(77, 0.3))] {
        let mut host_net = Network::new(CpuBackend::new(), shape.clone(), &params, 16, 32).unwrap();
        let mut batch = HostBatch::default();
        batch.fill(chunk.iter().map(|&r| data.text(r)), shape.dims.kernel);
        for labels in &data.labels {
            batch.labels.extend(chunk.iter().map(|&r| labels[r]));
        }
        let want = host_net
            .backward(&batch, &[1.0, 0.7], &mut Sum, dropout.as_ref())
            .unwrap();

        let mut net = Network::new(CpuBackend::new(), shape.clone(), &params, 16, 32).unwrap();
        let texts = net.upload_texts(&data).unwrap();
        let device_order = net.upload_order(&order).unwrap();
        let got = net
            .backward_rows(
                &texts,
                &data,
                &device_order,
                start,
                chunk,
                &[1.0, 0.7],
                &mut Sum,
                dropout.as_ref(),
            )
            .unwrap();

        assert_eq!(got, want, "losses (dropout {dropout:?})");
        let bits = |net: &Network<CpuBackend>| -> Vec<u32> {
            net.grads_to_host()
                .unwrap()
                .iter()
                .map(|g| g.to_bits())
                .collect()
        };
        assert!(
            bits(&net) == bits(&host_net),
            "gradients (dropout {dropout:?})"
        );
        assert!(
            net.grads_to_host().unwrap().iter().any(|&g| g != 0.0),
            "no gradient at all"
        );
    }
}
