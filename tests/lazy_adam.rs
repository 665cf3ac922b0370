//! LazyAdam (`--optimizer lazy-adam`) through the whole network: against a
//! float64 reference of its rule over several steps, equal to Adam bit for
//! bit when every batch uses every row, and leaving rows no batch used
//! exactly as they were.

use polyhead::backend::cpu::CpuBackend;
use polyhead::model::init::initial_params;
use polyhead::model::network::{AdamConfig, HostBatch, Network, Sum};
use polyhead::model::{Dims, HeadDims, Shape};
use polyhead::rng::Rng;

fn shape() -> Shape {
    Shape::new(Dims {
        vocab: 30,
        embed: 6,
        filters: 5,
        kernel: 3,
        heads: vec![
            HeadDims {
                hidden: 4,
                classes: 3,
            },
            HeadDims {
                hidden: 3,
                classes: 2,
            },
        ],
    })
}

const LAZY: AdamConfig = AdamConfig {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    lazy_embedding: true,
};

/// Eight texts drawn from `words`, with random labels.
fn batch(rng: &mut Rng, words: &[i32], kernel: usize) -> HostBatch {
    let texts: Vec<Vec<i32>> = (0..8)
        .map(|_| {
            let len = 1 + rng.below(9) as usize;
            (0..len)
                .map(|_| words[rng.below(words.len() as u64) as usize])
                .collect()
        })
        .collect();
    let mut batch = HostBatch::default();
    batch.fill(texts.iter().map(Vec::as_slice), kernel);
    batch.labels.extend((0..8).map(|_| rng.below(3) as i32));
    batch.labels.extend((0..8).map(|_| rng.below(2) as i32));
    batch
}

fn network(shape: &Shape) -> Network<CpuBackend> {
    let params = initial_params(shape, &mut Rng::new(5));
    Network::new(CpuBackend::new(), shape.clone(), &params, 8, 16).unwrap()
}

/// Runs `steps` steps on batches drawn from `words`, checking every step
/// against the float64 rule: an embedding row moves (and its moments
/// change) only in steps whose batch holds its id; every other parameter
/// follows Adam. Returns the parameters before and after.
fn check_against_reference(words: &[i32], steps: usize) -> (Vec<f32>, Vec<f32>) {
    let shape = shape();
    let (rows, width) = (shape.dims.vocab, shape.dims.embed);
    let mut net = network(&shape);
    let start = net.params_to_host().unwrap();
    let mut p: Vec<f64> = start.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0.0f64; p.len()], vec![0.0f64; p.len()]);
    let mut rng = Rng::new(11);
    let (b1, b2) = (LAZY.beta1 as f64, LAZY.beta2 as f64);

    for t in 1..=steps {
        let batch = batch(&mut rng, words, shape.dims.kernel);
        net.backward(&batch, &[1.0, 1.0], &mut Sum, None).unwrap();
        let grads = net.grads_to_host().unwrap();
        net.adam_step(&LAZY).unwrap();

        let used: Vec<bool> = (0..rows)
            .map(|r| batch.tokens.contains(&(r as i32)))
            .collect();
        let step_size = LAZY.lr as f64 / (1.0 - b1.powi(t as i32));
        let correction2 = (1.0 - b2.powi(t as i32)).sqrt();
        for i in 0..p.len() {
            if i < rows * width && !used[i / width] {
                continue;
            }
            let g = grads[i] as f64;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            p[i] -= step_size * m[i] / (v[i].sqrt() / correction2 + LAZY.eps as f64);
        }
        let got = net.params_to_host().unwrap();
        for (i, (&got, &want)) in got.iter().zip(&p).enumerate() {
            assert!(
                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "step {t}, parameter {i}: {got} vs {want}"
            );
        }
    }
    (start, net.params_to_host().unwrap())
}

#[test]
fn follows_the_lazy_rule_step_by_step() {
    let words: Vec<i32> = (1..30).collect();
    check_against_reference(&words, 12);
}

#[test]
fn rows_no_batch_uses_stay_exactly_as_they_were() {
    // Ids 0..=9 only (0 is padding): rows 10..30 are never used.
    let words: Vec<i32> = (1..10).collect();
    let (start, end) = check_against_reference(&words, 8);
    let width = shape().dims.embed;
    assert_eq!(start[10 * width..30 * width], end[10 * width..30 * width]);
    assert_ne!(start[width..10 * width], end[width..10 * width]);
}

#[test]
fn equals_adam_when_every_batch_uses_every_row() {
    let shape = shape();
    let all: Vec<i32> = (0..30).collect();
    let mut runs = Vec::new();
    for lazy_embedding in [false, true] {
        let params = initial_params(&shape, &mut Rng::new(5));
        let mut net = Network::new(CpuBackend::new(), shape.clone(), &params, 8, 32).unwrap();
        let mut rng = Rng::new(3);
        for _ in 0..5 {
            // The first text lists every id; the others are random.
            let drawn = batch(&mut rng, &all, shape.dims.kernel);
            let mut texts = vec![all.clone()];
            texts
                .extend((1..8).map(|b| {
                    drawn.tokens[b * drawn.width..][..drawn.lengths[b] as usize].to_vec()
                }));
            let mut batch = HostBatch::default();
            batch.fill(texts.iter().map(Vec::as_slice), shape.dims.kernel);
            batch.labels = drawn.labels;
            net.backward(&batch, &[1.0, 1.0], &mut Sum, None).unwrap();
            net.adam_step(&AdamConfig {
                lazy_embedding,
                ..LAZY
            })
            .unwrap();
        }
        let bits: Vec<u32> = net
            .params_to_host()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        runs.push(bits);
    }
    assert_eq!(runs[0], runs[1]);
}
