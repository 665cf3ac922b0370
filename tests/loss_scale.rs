//! Dynamic loss scaling (used with fp16 working copies), checked on the CPU
//! backend: a power-of-two scale changes no bit of a step, an overflowing
//! step is skipped and the scale halved, and the scale grows back.

use polyhead::backend::cpu::CpuBackend;
use polyhead::data::dataset::Encoded;
use polyhead::model::init::initial_params;
use polyhead::model::network::{AdamConfig, GradientMix, HostBatch, LossScale, Network, Sum};
use polyhead::model::{Dims, HeadDims, Shape};
use polyhead::rng::Rng;
use polyhead::train::weighting::{Method, Weighting};
use polyhead::train::{train, Event, RunState, Sampling, TrainConfig};

fn shape() -> Shape {
    Shape::new(Dims {
        vocab: 40,
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
    })
}

/// `rows` random texts of 0 to 11 tokens with random labels; one label in
/// five is missing.
fn random_data(rows: usize, rng: &mut Rng) -> Encoded {
    let mut tokens = Vec::new();
    let mut offsets = vec![0];
    for _ in 0..rows {
        let len = rng.below(12) as usize;
        tokens.extend((0..len).map(|_| 1 + rng.below(39) as i32));
        offsets.push(tokens.len());
    }
    let labels = [3usize, 2]
        .iter()
        .map(|&classes| {
            (0..rows)
                .map(|_| match rng.below(5) {
                    0 => -1,
                    _ => rng.below(classes as u64) as i32,
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

fn config(task_weights: Vec<f32>) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 8,
        adam: AdamConfig::default(),
        dropout: 0.0,
        task_weights,
        weighting: Method::Equal,
        eval_batch: 64,
        checkpoint_every: None,
        monitor: None,
        sampling: Sampling::Proportional,
        class_weights: None,
    }
}

fn network(shape: &Shape, seed: u64) -> Network<CpuBackend> {
    let params = initial_params(shape, &mut Rng::new(seed));
    Network::new(CpuBackend::new(), shape.clone(), &params, 8, 16).unwrap()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// The same step with the loss scaled by 2^10 and by 1: the gradient
/// buffer differs by exactly that factor and the updated parameters not at
/// all, with plain summation and with a method that reads the Gram matrix.
#[test]
fn a_power_of_two_scale_changes_no_bit_of_a_step() {
    let shape = shape();
    let mut rng = Rng::new(7);
    let data = random_data(8, &mut rng);
    let mut batch = HostBatch::default();
    batch.fill((0..8).map(|r| data.text(r)), shape.dims.kernel);
    for labels in &data.labels {
        batch.labels.extend(labels);
    }

    for pcgrad in [false, true] {
        let mut runs = Vec::new();
        for scale in [1.0f32, 1024.0] {
            let mut net = network(&shape, 3);
            net.loss_scale = scale;
            let mut weighting = Weighting::new(Method::PcGrad, vec![1.0, 1.0], 1e-3, Rng::new(1));
            let mut sum = Sum;
            let mix: &mut dyn GradientMix = if pcgrad { &mut weighting } else { &mut sum };
            let losses = net.backward(&batch, &[1.0, 0.5], mix, None).unwrap();
            let grads = net.grads_to_host().unwrap();
            net.adam_step(&AdamConfig::default()).unwrap();
            runs.push((losses, grads, net.params_to_host().unwrap()));
        }
        let (plain, scaled) = (&runs[0], &runs[1]);
        assert_eq!(
            plain.0, scaled.0,
            "losses and Gram matrix (pcgrad {pcgrad})"
        );
        let times: Vec<f32> = plain.1.iter().map(|g| g * 1024.0).collect();
        assert_eq!(
            bits(&times),
            bits(&scaled.1),
            "scaled gradient (pcgrad {pcgrad})"
        );
        assert!(
            plain.2 != initial_params(&shape, &mut Rng::new(3)),
            "the step moved nothing"
        );
        assert_eq!(
            bits(&plain.2),
            bits(&scaled.2),
            "parameters (pcgrad {pcgrad})"
        );
    }
}

#[test]
fn the_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
    let mut scale = LossScale::initial();
    assert!(!scale.update(false));
    assert_eq!(scale.scale, LossScale::INITIAL / 2.0);
    for step in 1..LossScale::GROWTH_INTERVAL {
        assert!(scale.update(true));
        assert_eq!(scale.good_steps, step);
    }
    assert!(scale.update(true));
    assert_eq!(scale.scale, LossScale::INITIAL);
    assert_eq!(scale.good_steps, 0);

    let mut low = LossScale {
        scale: LossScale::MIN,
        good_steps: 5,
    };
    assert!(!low.update(false));
    assert_eq!(low.scale, LossScale::MIN, "the scale has a floor");
    assert!(low.is_valid());
    let bad = LossScale {
        scale: 3.0,
        good_steps: 0,
    };
    assert!(!bad.is_valid(), "3 is not a power of two");
}

/// A run whose scale starts far too high: the first steps overflow and are
/// skipped (the parameters do not move), the scale halves each time until
/// the gradient is finite, and training then goes on.
#[test]
fn overflowing_steps_are_skipped_until_the_scale_fits() {
    let shape = shape();
    let data = random_data(160, &mut Rng::new(11));
    let config = config(vec![64.0, 64.0]);
    let names = vec!["a".to_string(), "b".to_string()];
    let mut net = network(&shape, 5);
    let before = net.params_to_host().unwrap();
    let mut state = RunState::new(&config, 0);
    let start = 2.0f32.powi(127);
    state.loss_scale = Some(LossScale {
        scale: start,
        good_steps: 0,
    });

    let mut params_after_first_batch = None;
    let reports = train(
        &mut net,
        &data,
        None,
        &names,
        &config,
        &mut state,
        &mut |net, event| {
            let first = params_after_first_batch.is_none();
            if let (Event::Batch { done: 1, .. }, true) = (event, first) {
                params_after_first_batch = Some(net.params_to_host()?);
            }
            Ok(())
        },
    )
    .unwrap();

    let skipped = reports[0].skipped_steps.expect("scaling was on");
    let scale = reports[0].loss_scale.unwrap();
    assert!(skipped >= 1, "2^127 * 64 must overflow");
    assert!(
        skipped < 20,
        "{skipped} of 20 steps skipped: training never resumed"
    );
    assert_eq!(
        scale,
        start / 2.0f32.powi(skipped as i32),
        "one halving per skip"
    );
    assert_eq!(
        reports[1].skipped_steps,
        Some(0),
        "the scale fits in epoch 2"
    );
    assert_eq!(net.step, 40 - skipped as u64, "Adam steps taken");
    assert_eq!(
        bits(&params_after_first_batch.unwrap()),
        bits(&before),
        "a skipped step must not move the parameters"
    );
    assert!(
        net.params_to_host().unwrap() != before,
        "training never moved"
    );
}

/// A run without scaling and one whose power-of-two scale never overflows
/// end with the same bits.
#[test]
fn training_with_a_fitting_scale_matches_training_without() {
    let shape = shape();
    let data = random_data(40, &mut Rng::new(13));
    let config = config(vec![1.0, 1.0]);
    let names = vec!["a".to_string(), "b".to_string()];
    let mut finals = Vec::new();
    for scale in [None, Some(LossScale::initial())] {
        let mut net = network(&shape, 9);
        let mut state = RunState::new(&config, 4);
        state.loss_scale = scale;
        let reports = train(
            &mut net,
            &data,
            None,
            &names,
            &config,
            &mut state,
            &mut |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(reports[1].skipped_steps, scale.map(|_| 0));
        finals.push(bits(&net.params_to_host().unwrap()));
    }
    assert!(finals[0] == finals[1], "scaled and unscaled runs differ");
}
