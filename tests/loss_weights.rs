//! The loss weights an epoch reports are the ones its steps trained with,
//! checked on the CPU backend by retraining the epoch with those weights
//! fixed and comparing the training loss bit for bit.

use polyhead::backend::cpu::CpuBackend;
use polyhead::data::dataset::Encoded;
use polyhead::model::init::initial_params;
use polyhead::model::network::{AdamConfig, Network};
use polyhead::model::{Dims, HeadDims, Shape};
use polyhead::rng::Rng;
use polyhead::train::weighting::{Method, Weighting};
use polyhead::train::{train, EpochReport, RunState, Sampling, TrainConfig};

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

/// `rows` random texts of 1 to 11 tokens; task 0's label follows the first
/// token, so it is learnt quickly, while task 1's is noise: their losses
/// fall at different rates, which DWA turns into unequal weights.
fn data(rows: usize, rng: &mut Rng) -> Encoded {
    let mut tokens = Vec::new();
    let mut offsets = vec![0];
    let mut labels = vec![Vec::new(), Vec::new()];
    for _ in 0..rows {
        let len = 1 + rng.below(11) as usize;
        let text: Vec<i32> = (0..len).map(|_| 2 + rng.below(38) as i32).collect();
        labels[0].push(text[0] % 3);
        labels[1].push(rng.below(2) as i32);
        tokens.extend(text);
        offsets.push(tokens.len());
    }
    Encoded {
        tokens,
        offsets,
        labels,
        lines: (2..rows + 2).collect(),
        sources: vec![0; rows],
    }
}

fn config(epochs: usize, weighting: Method, task_weights: Vec<f32>) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 8,
        adam: AdamConfig {
            lr: 0.02,
            ..AdamConfig::default()
        },
        dropout: 0.0,
        task_weights,
        weighting,
        eval_batch: 64,
        checkpoint_every: None,
        monitor: None,
        sampling: Sampling::Proportional,
        class_weights: None,
    }
}

fn network(seed: u64) -> Network<CpuBackend> {
    let shape = shape();
    let params = initial_params(&shape, &mut Rng::new(seed));
    Network::new(CpuBackend::new(), shape, &params, 8, 16).unwrap()
}

fn run(
    net: &mut Network<CpuBackend>,
    train_data: &Encoded,
    config: &TrainConfig,
    state: &mut RunState,
) -> Vec<EpochReport> {
    let names = vec!["a".to_string(), "b".to_string()];
    train(net, train_data, None, &names, config, state, &mut |_, _| {
        Ok(())
    })
    .unwrap()
}

fn weights(report: &EpochReport) -> Vec<f64> {
    report.loss_weights.iter().map(|(_, w)| *w).collect()
}

/// DWA trains epochs 1 and 2 with weights 1 and epoch 3 with weights from
/// the loss ratios of epochs 2 and 1. Each epoch must report the weights
/// it trained with: 1 for epochs 1 and 2 (epoch 2's loss equals an
/// equal-weight run's), and for epoch 3 weights that, fixed with
/// `--task-weights`, reproduce epoch 3's loss exactly.
#[test]
fn dwa_epochs_report_the_weights_they_trained_with() {
    let train_data = data(96, &mut Rng::new(21));
    let (model_seed, run_seed) = (4, 6);

    let dwa_config = config(3, Method::Dwa, vec![1.0, 1.0]);
    let mut dwa_net = network(model_seed);
    let mut dwa_state = RunState::new(&dwa_config, run_seed);
    let dwa = run(&mut dwa_net, &train_data, &dwa_config, &mut dwa_state);
    assert_eq!(dwa.len(), 3);
    assert_eq!(weights(&dwa[0]), vec![1.0, 1.0], "epoch 1");
    assert_eq!(weights(&dwa[1]), vec![1.0, 1.0], "epoch 2");

    let third = weights(&dwa[2]);
    assert!(
        (third[0] + third[1] - 2.0).abs() < 1e-12,
        "DWA weights sum to the number of tasks: {third:?}"
    );
    assert!(
        (third[0] - third[1]).abs() > 1e-4,
        "the tasks' losses fell alike, so the test shows nothing: {third:?}"
    );

    let equal_config = config(2, Method::Equal, vec![1.0, 1.0]);
    let mut net = network(model_seed);
    let mut state = RunState::new(&equal_config, run_seed);
    let equal = run(&mut net, &train_data, &equal_config, &mut state);
    assert_eq!(
        equal[1].train_loss.to_bits(),
        dwa[1].train_loss.to_bits(),
        "epoch 2 of DWA trained with weights 1"
    );

    // Epoch 3 again from the same point, with the reported weights fixed.
    let fixed: Vec<f32> = third.iter().map(|&w| w as f32).collect();
    let fixed_config = config(3, Method::Equal, fixed.clone());
    let base = fixed.iter().map(|&w| w as f64).collect();
    let lr = fixed_config.adam.lr as f64;
    state.weighting = Weighting::new(Method::Equal, base, lr, Rng::new(0));
    let replayed = run(&mut net, &train_data, &fixed_config, &mut state);
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].epoch, 3);
    assert_eq!(
        replayed[0].train_loss.to_bits(),
        dwa[2].train_loss.to_bits(),
        "epoch 3 with the reported weights {third:?}: loss {} against DWA's {}",
        replayed[0].train_loss,
        dwa[2].train_loss
    );
}
