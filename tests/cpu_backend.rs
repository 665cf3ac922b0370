//! The CPU backend against a plain float64 reference of DESIGN.md's model
//! ("The model, exactly"), on fresh random inputs, for every code path this
//! machine supports (AVX-512F, AVX2+FMA, scalar).
//!
//! Each test prints its seed; `POLYHEAD_TEST_SEED=<seed>` replays it. Every
//! output is poisoned (NaN, or `i32::MIN`) before each call, so an element
//! left unwritten fails. Errors are measured relative to the sum of the
//! absolute values of the terms that make up each element (`|got - want| /
//! sum |terms|`), the scale at which float32 rounding acts; the worst is
//! printed (`cargo test --release --test cpu_backend -- --nocapture`).

use std::time::{SystemTime, UNIX_EPOCH};

use polyhead::backend::cpu::{CpuBackend, SimdPath};
use polyhead::backend::{AdamStep, Backend, LazyRows, TokenBatch};
use polyhead::model::{Dims, HeadDims, Shape};

// ---------------------------------------------------------------------------
// Random inputs

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[-scale, scale)`.
    fn uniform(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// A fresh seed per test (or `POLYHEAD_TEST_SEED`), printed so a failure
/// can be replayed.
fn seeded(test: &str) -> Rng {
    let seed = std::env::var("POLYHEAD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (nanos as u64) ^ (test.len() as u64).rotate_left(32) ^ test.as_ptr() as u64
        });
    println!("{test}: seed {seed} (POLYHEAD_TEST_SEED={seed} replays it)");
    Rng(seed)
}

fn paths() -> Vec<SimdPath> {
    let paths = SimdPath::available();
    let names: Vec<&str> = paths.iter().map(|p| p.name()).collect();
    println!("paths on this machine: {names:?}");
    paths
}

fn random_dims(rng: &mut Rng) -> Dims {
    let tasks = rng.range(1, 3);
    Dims {
        vocab: rng.range(2, 40),
        embed: rng.range(1, 40),
        filters: rng.range(1, 70),
        kernel: rng.range(1, 6),
        heads: (0..tasks)
            .map(|_| HeadDims {
                hidden: rng.range(1, 40),
                classes: rng.range(1, 6),
            })
            .collect(),
    }
}

/// Parameters with the embedding's PAD row zero, as the model keeps it.
fn random_params(rng: &mut Rng, shape: &Shape) -> Vec<f32> {
    let mut params: Vec<f32> = (0..shape.len).map(|_| rng.uniform(0.5)).collect();
    params[..shape.dims.embed].fill(0.0);
    params
}

/// A batch of texts on the host.
#[derive(Clone)]
struct Texts {
    tokens: Vec<i32>,
    lengths: Vec<i32>,
    rows: usize,
    width: usize,
}

impl Texts {
    fn len(&self, b: usize) -> usize {
        self.lengths[b] as usize
    }

    fn token(&self, b: usize, p: usize) -> usize {
        self.tokens[b * self.width + p] as usize
    }

    fn windows(&self, b: usize, kernel: usize) -> usize {
        self.len(b).max(kernel) - kernel + 1
    }

    fn batch(&self) -> TokenBatch<'_, CpuBackend> {
        TokenBatch {
            tokens: &self.tokens,
            lengths: &self.lengths,
            rows: self.rows,
            width: self.width,
        }
    }
}

/// Texts of every awkward kind: empty (all padding), one token, shorter
/// than the kernel, exactly the kernel, the full width, random; some made
/// of a repeated token or a repeated pair, so whole windows are duplicated
/// and the max has exact ties. The width sometimes exceeds every length.
fn random_texts(rng: &mut Rng, shape: &Shape, rows: usize) -> Texts {
    let (vocab, kernel) = (shape.dims.vocab, shape.dims.kernel);
    let width = kernel + rng.below(12);
    let longest = if rng.chance(30) {
        rng.range(0, width)
    } else {
        width
    };
    let mut tokens = vec![0; rows * width];
    let mut lengths = vec![0; rows];
    for b in 0..rows {
        let len = match rng.below(8) {
            0 => 0,
            1 => 1,
            2 => kernel.saturating_sub(1),
            3 => kernel,
            4 => width,
            _ => rng.range(0, width),
        }
        .min(longest);
        let pattern: Vec<usize> = match rng.below(6) {
            0 => vec![rng.range(1, vocab - 1)],
            1 => vec![rng.range(1, vocab - 1), rng.range(1, vocab - 1)],
            _ => Vec::new(),
        };
        for p in 0..len {
            let token = if pattern.is_empty() {
                rng.range(1, vocab - 1)
            } else {
                pattern[p % pattern.len()]
            };
            tokens[b * width + p] = token as i32;
        }
        lengths[b] = len as i32;
    }
    Texts {
        tokens,
        lengths,
        rows,
        width,
    }
}

fn random_shape(rng: &mut Rng) -> Shape {
    Shape::new(random_dims(rng))
}

// ---------------------------------------------------------------------------
// Comparison

/// Tolerance on `|got - want| / sum |terms|`: float32 sums of a few hundred
/// terms land well inside it; a wrong term does not.
const TOL: f64 = 1e-4;

/// Checks every element, returns the worst relative error.
fn compare(what: &str, got: &[f32], want: &[f64], magnitude: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(magnitude).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g} (not written?), want {w}");
        let err = (g as f64 - w).abs() / m.max(f64::MIN_POSITIVE);
        assert!(
            err <= TOL || (g as f64 - w).abs() < 1e-30,
            "{what}[{i}]: got {g}, want {w} (relative error {err:.2e}, scale {m:.3e})"
        );
        worst = worst.max(if m > 0.0 { err } else { 0.0 });
    }
    worst
}

fn nan_vec(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

// ---------------------------------------------------------------------------
// The float64 reference model

/// Embedding value of text `b` at position `p`; zero past the text's end.
fn embedded(shape: &Shape, params: &[f64], texts: &Texts, b: usize, p: usize, d: usize) -> f64 {
    if p < texts.len(b) {
        params[shape.embedding.offset + texts.token(b, p) * shape.dims.embed + d]
    } else {
        0.0
    }
}

/// `z[b, t, f]` and the sum of the absolute values of its terms.
fn window_z(
    shape: &Shape,
    params: &[f64],
    texts: &Texts,
    b: usize,
    t: usize,
    f: usize,
) -> (f64, f64) {
    let (dim, kernel) = (shape.dims.embed, shape.dims.kernel);
    let bias = params[shape.conv_bias.offset + f];
    let (mut z, mut magnitude) = (bias, bias.abs());
    for j in 0..kernel {
        for d in 0..dim {
            let w = params[shape.conv_weight.offset + (f * dim + d) * kernel + j];
            let term = w * embedded(shape, params, texts, b, t + j, d);
            z += term;
            magnitude += term.abs();
        }
    }
    (z, magnitude)
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Runs the backend's encoder forward on poisoned outputs.
fn encoder_forward(
    cpu: &mut CpuBackend,
    shape: &Shape,
    params: &Vec<f32>,
    texts: &Texts,
) -> (Vec<f32>, Vec<i32>) {
    let n = texts.rows * shape.dims.filters;
    let (mut h, mut win) = (nan_vec(n), vec![i32::MIN; n]);
    cpu.encoder_forward(shape, params, &texts.batch(), &mut h, &mut win)
        .unwrap();
    (h, win)
}

/// Checks `h` and `win` against the reference; returns the worst error.
fn check_encoder_forward(
    shape: &Shape,
    params: &[f32],
    texts: &Texts,
    h: &[f32],
    win: &[i32],
) -> f64 {
    let (filters, kernel) = (shape.dims.filters, shape.dims.kernel);
    let p64 = to_f64(params);
    let mut want = Vec::new();
    let mut magnitude = Vec::new();
    for b in 0..texts.rows {
        let windows = texts.windows(b, kernel);
        for f in 0..filters {
            let z: Vec<(f64, f64)> = (0..windows)
                .map(|t| window_z(shape, &p64, texts, b, t, f))
                .collect();
            let top = z.iter().map(|&(v, _)| v).fold(f64::NEG_INFINITY, f64::max);
            let scale = z.iter().map(|&(_, m)| m).fold(0.0, f64::max);
            want.push(top.max(0.0));
            magnitude.push(scale);

            let w = win[b * filters + f];
            assert!(
                w >= 0 && (w as usize) < windows,
                "win[{b},{f}] = {w}: text {b} has {windows} windows"
            );
            let w = w as usize;
            assert!(
                z[w].0 >= top - TOL * scale,
                "win[{b},{f}] = {w} scores {} but the max is {top}",
                z[w].0
            );
            // An earlier window with exactly the same value has the same
            // content (exact tie): the earliest must win.
            if let Some(t) = (0..w).find(|&t| z[t].0 == z[w].0) {
                panic!("win[{b},{f}] = {w}, but window {t} ties with it and comes first");
            }
        }
    }
    compare("h", h, &want, &magnitude)
}

// ---------------------------------------------------------------------------
// Encoder forward

#[test]
fn encoder_forward_matches_reference() {
    let mut rng = seeded("encoder_forward_matches_reference");
    for path in paths() {
        let mut worst = 0.0f64;
        for _ in 0..30 {
            let shape = random_shape(&mut rng);
            let params = random_params(&mut rng, &shape);
            let rows = rng.range(1, 12);
            let texts = random_texts(&mut rng, &shape, rows);
            let mut cpu = CpuBackend::with_path(path);
            let (h, win) = encoder_forward(&mut cpu, &shape, &params, &texts);
            worst = worst.max(check_encoder_forward(&shape, &params, &texts, &h, &win));
        }
        println!(
            "{}: encoder forward, worst relative error {worst:.2e}",
            path.name()
        );
    }
}

#[test]
fn encoder_forward_matches_reference_at_the_bench_width() {
    let mut rng = seeded("encoder_forward_matches_reference_at_the_bench_width");
    let shape = Shape::new(Dims {
        vocab: 60,
        embed: 128,
        filters: 128,
        kernel: 5,
        heads: vec![HeadDims {
            hidden: 8,
            classes: 3,
        }],
    });
    let params = random_params(&mut rng, &shape);
    let texts = random_texts(&mut rng, &shape, 16);
    for path in paths() {
        let mut cpu = CpuBackend::with_path(path);
        let (h, win) = encoder_forward(&mut cpu, &shape, &params, &texts);
        let worst = check_encoder_forward(&shape, &params, &texts, &h, &win);
        println!(
            "{}: D 128 F 128 k 5, worst relative error {worst:.2e}",
            path.name()
        );
    }
}

#[test]
fn ties_go_to_the_earliest_window() {
    let mut rng = seeded("ties_go_to_the_earliest_window");
    let shape = Shape::new(Dims {
        vocab: 9,
        embed: 17,
        filters: 37,
        kernel: 3,
        heads: vec![HeadDims {
            hidden: 2,
            classes: 2,
        }],
    });
    let params = random_params(&mut rng, &shape);
    // One repeated token: every window is the same, window 0 must win
    // everywhere. A repeated pair: windows alternate, 0 or 1 must win.
    // Then a text whose best window appears twice, far apart.
    let width = 30;
    let mut tokens = vec![0; 3 * width];
    tokens[..width].fill(4);
    for p in 0..width {
        tokens[width + p] = if p % 2 == 0 { 2 } else { 7 };
    }
    for p in 0..width {
        tokens[2 * width + p] = 1 + rng.below(8) as i32;
    }
    tokens.copy_within(2 * width..2 * width + 3, 2 * width + 20);
    let texts = Texts {
        tokens,
        lengths: vec![width as i32; 3],
        rows: 3,
        width,
    };
    for path in paths() {
        let mut cpu = CpuBackend::with_path(path);
        let (h, win) = encoder_forward(&mut cpu, &shape, &params, &texts);
        check_encoder_forward(&shape, &params, &texts, &h, &win);
        let filters = shape.dims.filters;
        assert!(
            win[..filters].iter().all(|&w| w == 0),
            "{}: {win:?}",
            path.name()
        );
        assert!(
            win[filters..2 * filters].iter().all(|&w| w <= 1),
            "{}",
            path.name()
        );
    }
}

#[test]
fn a_text_does_not_depend_on_its_batch() {
    // The same text alone (narrow batch) and among longer texts (wide batch)
    // gives the same bits: windows past a text's end never count.
    let mut rng = seeded("a_text_does_not_depend_on_its_batch");
    for path in paths() {
        let shape = random_shape(&mut rng);
        let params = random_params(&mut rng, &shape);
        let k = shape.dims.kernel;
        let len = rng.range(0, k + 3);
        let text: Vec<i32> = (0..len)
            .map(|_| rng.range(1, shape.dims.vocab - 1) as i32)
            .collect();
        let narrow_width = len.max(k);
        let mut narrow = vec![0; narrow_width];
        narrow[..len].copy_from_slice(&text);
        let alone = Texts {
            tokens: narrow,
            lengths: vec![len as i32],
            rows: 1,
            width: narrow_width,
        };
        let wide_width = narrow_width + 9;
        let mut wide = vec![0; 2 * wide_width];
        for slot in &mut wide[..wide_width] {
            *slot = rng.range(1, shape.dims.vocab - 1) as i32;
        }
        wide[wide_width..wide_width + len].copy_from_slice(&text);
        let among = Texts {
            tokens: wide,
            lengths: vec![wide_width as i32, len as i32],
            rows: 2,
            width: wide_width,
        };
        let mut cpu = CpuBackend::with_path(path);
        let (h1, w1) = encoder_forward(&mut cpu, &shape, &params, &alone);
        let (h2, w2) = encoder_forward(&mut cpu, &shape, &params, &among);
        let f = shape.dims.filters;
        assert_eq!(bits(&h1), bits(&h2[f..]), "{}", path.name());
        assert_eq!(w1, w2[f..], "{}", path.name());
    }
}

// ---------------------------------------------------------------------------
// Encoder backward

/// A sentinel the encoder backward must leave alone in the head spans.
const UNTOUCHED: f32 = 12345.0;

fn poisoned_grads(shape: &Shape) -> Vec<f32> {
    let mut grads = vec![UNTOUCHED; shape.len];
    grads[shape.embedding.range()].fill(f32::NAN);
    grads[shape.conv_weight.range()].fill(f32::NAN);
    grads[shape.conv_bias.range()].fill(f32::NAN);
    grads
}

/// Reference encoder gradient from the backend's `h` and `win`:
/// (value, magnitude) for the whole flat buffer's encoder spans.
fn reference_encoder_backward(
    shape: &Shape,
    params: &[f32],
    texts: &Texts,
    h: &[f32],
    win: &[i32],
    dh: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let d = &shape.dims;
    let (dim, filters, kernel) = (d.embed, d.filters, d.kernel);
    let p64 = to_f64(params);
    let mut want = vec![0.0; shape.len];
    let mut magnitude = vec![0.0; shape.len];
    for b in 0..texts.rows {
        for f in 0..filters {
            let i = b * filters + f;
            let g = if h[i] > 0.0 { dh[i] as f64 } else { 0.0 };
            let t = win[i] as usize;
            want[shape.conv_bias.offset + f] += g;
            magnitude[shape.conv_bias.offset + f] += g.abs();
            for j in 0..kernel {
                let p = t + j;
                for dd in 0..dim {
                    let wi = shape.conv_weight.offset + (f * dim + dd) * kernel + j;
                    let x = embedded(shape, &p64, texts, b, p, dd);
                    want[wi] += g * x;
                    magnitude[wi] += (g * x).abs();
                    if p < texts.len(b) {
                        let e = shape.embedding.offset + texts.token(b, p) * dim + dd;
                        want[e] += g * p64[wi];
                        magnitude[e] += (g * p64[wi]).abs();
                    }
                }
            }
        }
    }
    (want, magnitude)
}

fn check_encoder_backward(
    shape: &Shape,
    params: &[f32],
    texts: &Texts,
    (h, win, dh): (&[f32], &[i32], &[f32]),
    grads: &[f32],
) -> f64 {
    let (want, magnitude) = reference_encoder_backward(shape, params, texts, h, win, dh);
    let mut worst = 0.0f64;
    for span in [shape.embedding, shape.conv_weight, shape.conv_bias] {
        let r = span.range();
        worst = worst.max(compare(
            "encoder grads",
            &grads[r.clone()],
            &want[r.clone()],
            &magnitude[r],
        ));
    }
    let encoder_end = shape.conv_bias.offset + shape.conv_bias.len;
    assert!(
        grads[encoder_end..].iter().all(|&g| g == UNTOUCHED),
        "the encoder backward wrote outside its spans"
    );
    assert!(
        grads[..shape.dims.embed].iter().all(|&g| g == 0.0),
        "the PAD row's gradient is not zero"
    );
    worst
}

#[test]
fn encoder_backward_matches_reference() {
    let mut rng = seeded("encoder_backward_matches_reference");
    for path in paths() {
        let mut worst = 0.0f64;
        for trial in 0..30 {
            let shape = random_shape(&mut rng);
            let params = random_params(&mut rng, &shape);
            let rows = rng.range(1, 12);
            let texts = random_texts(&mut rng, &shape, rows);
            let mut cpu = CpuBackend::with_path(path);
            let (h, win) = encoder_forward(&mut cpu, &shape, &params, &texts);
            let mut dh: Vec<f32> = (0..h.len()).map(|_| rng.uniform(1.0)).collect();
            // Some exact zeros in dh: those filters must not contribute.
            for g in dh.iter_mut() {
                if rng.chance(10) {
                    *g = 0.0;
                }
            }
            // Twice on the same backend: the second call must not keep
            // anything of the first (its outputs are poisoned again).
            for _ in 0..2 {
                let mut grads = poisoned_grads(&shape);
                cpu.encoder_backward(&shape, &params, &texts.batch(), &h, &win, &dh, &mut grads)
                    .unwrap();
                let inputs = (&h[..], &win[..], &dh[..]);
                worst = worst.max(check_encoder_backward(
                    &shape, &params, &texts, inputs, &grads,
                ));
            }
            if trial == 0 {
                // The second text batch on the same backend: different rows
                // are used, the previous batch's rows must read zero.
                let other = random_texts(&mut rng, &shape, rows);
                let (h2, win2) = encoder_forward(&mut cpu, &shape, &params, &other);
                let dh2: Vec<f32> = (0..h2.len()).map(|_| rng.uniform(1.0)).collect();
                let mut grads = poisoned_grads(&shape);
                cpu.encoder_backward(
                    &shape,
                    &params,
                    &other.batch(),
                    &h2,
                    &win2,
                    &dh2,
                    &mut grads,
                )
                .unwrap();
                let inputs = (&h2[..], &win2[..], &dh2[..]);
                check_encoder_backward(&shape, &params, &other, inputs, &grads);
            }
        }
        println!(
            "{}: encoder backward, worst relative error {worst:.2e}",
            path.name()
        );
    }
}

// ---------------------------------------------------------------------------
// Heads

fn random_heads_shape(rng: &mut Rng) -> Shape {
    let mut dims = random_dims(rng);
    dims.vocab = 3;
    Shape::new(dims)
}

/// `h` as the encoder makes it: non-negative, some exact zeros.
fn random_features(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            if rng.chance(20) {
                0.0
            } else {
                rng.uniform(1.0).abs()
            }
        })
        .collect()
}

#[test]
fn heads_forward_matches_reference() {
    let mut rng = seeded("heads_forward_matches_reference");
    for path in paths() {
        let mut worst = 0.0f64;
        for _ in 0..30 {
            let shape = random_heads_shape(&mut rng);
            let params = random_params(&mut rng, &shape);
            let rows = rng.range(0, 60);
            let (filters, sum_h, sum_c) =
                (shape.dims.filters, shape.sum_hidden(), shape.sum_classes());
            let h = random_features(&mut rng, rows * filters);
            let (mut hidden, mut logits) = (nan_vec(rows * sum_h), nan_vec(rows * sum_c));
            let mut cpu = CpuBackend::with_path(path);
            cpu.heads_forward(&shape, &params, &h, rows, &mut hidden, &mut logits)
                .unwrap();

            let (mut want_hidden, mut mag_hidden) = (Vec::new(), Vec::new());
            let w1 = &params[shape.hidden_weights.range()];
            let c1 = &params[shape.hidden_biases.range()];
            for b in 0..rows {
                for u in 0..sum_h {
                    let (mut z, mut m) = (c1[u] as f64, (c1[u] as f64).abs());
                    for f in 0..filters {
                        let term = w1[u * filters + f] as f64 * h[b * filters + f] as f64;
                        z += term;
                        m += term.abs();
                    }
                    want_hidden.push(z.max(0.0));
                    mag_hidden.push(m);
                }
            }
            worst = worst.max(compare("hidden", &hidden, &want_hidden, &mag_hidden));

            // The second layers from the backend's own hidden units.
            let (mut want_logits, mut mag_logits) =
                (vec![0.0; rows * sum_c], vec![0.0; rows * sum_c]);
            for (i, (spans, head)) in shape.heads.iter().zip(&shape.dims.heads).enumerate() {
                let (hoff, coff) = (shape.hidden_offset(i), shape.class_offset(i));
                for b in 0..rows {
                    for c in 0..head.classes {
                        let c2 = params[spans.out_bias.offset + c] as f64;
                        let (mut z, mut m) = (c2, c2.abs());
                        for u in 0..head.hidden {
                            let w = params[spans.out_weight.offset + c * head.hidden + u] as f64;
                            let term = w * hidden[b * sum_h + hoff + u] as f64;
                            z += term;
                            m += term.abs();
                        }
                        want_logits[b * sum_c + coff + c] = z;
                        mag_logits[b * sum_c + coff + c] = m;
                    }
                }
            }
            worst = worst.max(compare("logits", &logits, &want_logits, &mag_logits));
        }
        println!(
            "{}: heads forward, worst relative error {worst:.2e}",
            path.name()
        );
    }
}

#[test]
fn heads_backward_matches_reference() {
    let mut rng = seeded("heads_backward_matches_reference");
    for path in paths() {
        let mut worst = 0.0f64;
        for _ in 0..30 {
            let shape = random_heads_shape(&mut rng);
            let params = random_params(&mut rng, &shape);
            let rows = rng.range(0, 60);
            let (filters, sum_h, sum_c) =
                (shape.dims.filters, shape.sum_hidden(), shape.sum_classes());
            let tasks = shape.tasks();
            let h = random_features(&mut rng, rows * filters);
            let hidden = random_features(&mut rng, rows * sum_h);
            let dlogits: Vec<f32> = (0..rows * sum_c).map(|_| rng.uniform(1.0)).collect();

            let mut grads = vec![UNTOUCHED; shape.len];
            for spans in &shape.heads {
                for span in [
                    spans.hidden_weight,
                    spans.hidden_bias,
                    spans.out_weight,
                    spans.out_bias,
                ] {
                    grads[span.range()].fill(f32::NAN);
                }
            }
            let mut dh_tasks = nan_vec(tasks * rows * filters);
            let mut cpu = CpuBackend::with_path(path);
            cpu.heads_backward(
                &shape,
                &params,
                &h,
                &hidden,
                &dlogits,
                rows,
                &mut grads,
                &mut dh_tasks,
            )
            .unwrap();
            let encoder_end = shape.conv_bias.offset + shape.conv_bias.len;
            assert!(
                grads[..encoder_end].iter().all(|&g| g == UNTOUCHED),
                "wrote the encoder span"
            );

            let mut want = vec![0.0f64; shape.len];
            let mut magnitude = vec![0.0f64; shape.len];
            let mut want_dh = vec![0.0f64; tasks * rows * filters];
            let mut mag_dh = vec![0.0f64; tasks * rows * filters];
            for (i, (spans, head)) in shape.heads.iter().zip(&shape.dims.heads).enumerate() {
                let (hoff, coff) = (shape.hidden_offset(i), shape.class_offset(i));
                for b in 0..rows {
                    // The hidden units' gradient and the size of its terms:
                    // float32 rounding in it acts at that size, and carries
                    // into everything computed from it.
                    let mut g_hidden = vec![0.0f64; head.hidden];
                    let mut g_hidden_mag = vec![0.0f64; head.hidden];
                    for c in 0..head.classes {
                        let g = dlogits[b * sum_c + coff + c] as f64;
                        want[spans.out_bias.offset + c] += g;
                        magnitude[spans.out_bias.offset + c] += g.abs();
                        for u in 0..head.hidden {
                            let a = hidden[b * sum_h + hoff + u] as f64;
                            let wi = spans.out_weight.offset + c * head.hidden + u;
                            want[wi] += g * a;
                            magnitude[wi] += (g * a).abs();
                            if a > 0.0 {
                                g_hidden[u] += g * params[wi] as f64;
                                g_hidden_mag[u] += (g * params[wi] as f64).abs();
                            }
                        }
                    }
                    for (u, (&gu, &gm)) in g_hidden.iter().zip(&g_hidden_mag).enumerate() {
                        want[spans.hidden_bias.offset + u] += gu;
                        magnitude[spans.hidden_bias.offset + u] += gm;
                        for f in 0..filters {
                            let wi = spans.hidden_weight.offset + u * filters + f;
                            let x = h[b * filters + f] as f64;
                            want[wi] += gu * x;
                            magnitude[wi] += gm * x.abs();
                            let o = (i * rows + b) * filters + f;
                            want_dh[o] += gu * params[wi] as f64;
                            mag_dh[o] += gm * (params[wi] as f64).abs();
                        }
                    }
                }
            }
            for spans in &shape.heads {
                for span in [
                    spans.hidden_weight,
                    spans.hidden_bias,
                    spans.out_weight,
                    spans.out_bias,
                ] {
                    let r = span.range();
                    worst = worst.max(compare(
                        "head grads",
                        &grads[r.clone()],
                        &want[r.clone()],
                        &magnitude[r],
                    ));
                }
            }
            worst = worst.max(compare("dh_tasks", &dh_tasks, &want_dh, &mag_dh));
        }
        println!(
            "{}: heads backward, worst relative error {worst:.2e}",
            path.name()
        );
    }
}

// ---------------------------------------------------------------------------
// Loss

#[test]
fn softmax_cross_entropy_matches_reference() {
    let mut rng = seeded("softmax_cross_entropy_matches_reference");
    for path in paths() {
        let mut worst = 0.0f64;
        for _ in 0..30 {
            let shape = random_heads_shape(&mut rng);
            let rows = rng.range(0, 40);
            let (tasks, sum_c) = (shape.tasks(), shape.sum_classes());
            let logits: Vec<f32> = (0..rows * sum_c).map(|_| rng.uniform(8.0)).collect();
            let mut labels = Vec::new();
            let mut scales = Vec::new();
            for head in &shape.dims.heads {
                // Some tasks have no label at all in the batch.
                let none = rng.chance(15);
                for _ in 0..rows {
                    let missing = none || rng.chance(20);
                    labels.push(if missing {
                        -1
                    } else {
                        rng.below(head.classes) as i32
                    });
                }
                scales.push(rng.uniform(2.0));
            }
            // Class weights: all 1 half of the time, else random in [0, 2).
            let class_weights: Vec<f32> = if rng.chance(50) {
                vec![1.0; sum_c]
            } else {
                (0..sum_c).map(|_| rng.uniform(1.0) + 1.0).collect()
            };
            let mut dlogits = nan_vec(rows * sum_c);
            let mut loss_sums = nan_vec(tasks);
            let mut cpu = CpuBackend::with_path(path);
            cpu.softmax_cross_entropy(
                &shape,
                &logits,
                &labels,
                &class_weights,
                rows,
                &scales,
                &mut dlogits,
                &mut loss_sums,
            )
            .unwrap();

            let mut want = vec![0.0; rows * sum_c];
            let mut magnitude = vec![0.0; rows * sum_c];
            for (i, head) in shape.dims.heads.iter().enumerate() {
                let coff = shape.class_offset(i);
                let (mut loss, mut loss_mag) = (0.0f64, 0.0f64);
                for b in 0..rows {
                    let label = labels[i * rows + b];
                    if label < 0 {
                        continue;
                    }
                    let o: Vec<f64> = (0..head.classes)
                        .map(|c| logits[b * sum_c + coff + c] as f64)
                        .collect();
                    let max = o.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let log_sum = o.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                    let weight = class_weights[coff + label as usize] as f64;
                    let term = weight * (log_sum - (o[label as usize] - max));
                    loss += term;
                    loss_mag += term.abs() + 1.0;
                    let scale = weight * scales[i] as f64;
                    for c in 0..head.classes {
                        let p = (o[c] - max - log_sum).exp();
                        let target = if c == label as usize { 1.0 } else { 0.0 };
                        want[b * sum_c + coff + c] = (p - target) * scale;
                        magnitude[b * sum_c + coff + c] = scale.abs();
                    }
                }
                worst = worst.max(compare("loss", &loss_sums[i..i + 1], &[loss], &[loss_mag]));
            }
            worst = worst.max(compare("dlogits", &dlogits, &want, &magnitude));
        }
        println!(
            "{}: softmax cross-entropy, worst relative error {worst:.2e}",
            path.name()
        );
    }
}

// ---------------------------------------------------------------------------
// Element-wise operations

#[test]
fn combine_gram_multiply_and_finiteness_match_reference() {
    let mut rng = seeded("combine_gram_multiply_and_finiteness_match_reference");
    for path in paths() {
        let mut cpu = CpuBackend::with_path(path);
        let tasks = rng.range(1, 4);
        let len = rng.range(0, 70_000);
        let blocks: Vec<f32> = (0..tasks * len).map(|_| rng.uniform(1.0)).collect();
        let coeffs: Vec<f32> = (0..tasks).map(|_| rng.uniform(2.0)).collect();
        let mut dh = nan_vec(len + 3);
        cpu.combine_tasks(&blocks, &coeffs, len, &mut dh).unwrap();
        let mut want = vec![0.0; len];
        let mut magnitude = vec![0.0; len];
        for i in 0..tasks {
            for e in 0..len {
                let term = coeffs[i] as f64 * blocks[i * len + e] as f64;
                want[e] += term;
                magnitude[e] += term.abs();
            }
        }
        let worst = compare("combine", &dh[..len], &want, &magnitude);
        assert!(
            dh[len..].iter().all(|v| v.is_nan()),
            "combine wrote past len"
        );

        let gram = cpu.task_gram(&blocks, tasks, len).unwrap();
        for i in 0..tasks {
            for j in 0..tasks {
                let (mut s, mut m) = (0.0f64, 0.0f64);
                for e in 0..len {
                    let term = blocks[i * len + e] as f64 * blocks[j * len + e] as f64;
                    s += term;
                    m += term.abs();
                }
                let err = (gram[i * tasks + j] - s).abs() / m.max(1e-300);
                assert!(
                    err < 1e-12,
                    "gram[{i}][{j}] = {}, want {s}",
                    gram[i * tasks + j]
                );
            }
        }

        let mask: Vec<f32> = (0..len)
            .map(|_| if rng.chance(30) { 0.0 } else { 1.25 })
            .collect();
        let mut x = blocks[..len].to_vec();
        x.push(7.0);
        cpu.multiply(&mut x, &mask, len).unwrap();
        for e in 0..len {
            assert_eq!(x[e], blocks[e] * mask[e], "multiply[{e}]");
        }
        assert_eq!(x[len], 7.0, "multiply wrote past len");

        let mut values: Vec<f32> = (0..len + 1).map(|_| rng.uniform(1e30)).collect();
        assert!(cpu.all_finite(&values, len + 1).unwrap());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let at = rng.below(len + 1);
            let keep = values[at];
            values[at] = bad;
            assert!(
                !cpu.all_finite(&values, len + 1).unwrap(),
                "{bad} at {at} missed"
            );
            // Past `len` it does not count.
            assert!(cpu.all_finite(&values, at).unwrap());
            values[at] = keep;
        }
        println!("{}: combine, worst relative error {worst:.2e}", path.name());
    }
}

// ---------------------------------------------------------------------------
// Adam

/// A moment that would fall below the smallest normal float is stored as
/// 0; one just above it is kept, and the parameters move as usual.
#[test]
fn adam_flushes_moments_below_the_smallest_normal_float() {
    let mut backend = CpuBackend::new();
    let n = 4;
    let above = f32::MIN_POSITIVE * 4.0; // halves to 2 * MIN_POSITIVE
    let below = f32::MIN_POSITIVE * 1.5; // halves below MIN_POSITIVE
    let mut params = vec![1.0f32; n];
    let mut m = vec![above, below, -below, 0.1];
    let mut v = vec![above, below, below, 0.1];
    let grads = vec![0.0, 0.0, 0.0, 0.5];
    let step = AdamStep {
        lr: 1e-3,
        beta1: 0.5,
        beta2: 0.5,
        eps: 1e-8,
        step: 3,
        grad_scale: 1.0,
    };
    backend
        .adam(&mut params, &grads, &mut m, &mut v, n, &step, None)
        .unwrap();
    assert_eq!(m[..3], [above * 0.5, 0.0, 0.0]);
    assert_eq!(v[..3], [above * 0.5, 0.0, 0.0]);
    assert!(
        m[3] > 0.0 && v[3] > 0.0 && params[3] < 1.0,
        "{m:?} {v:?} {params:?}"
    );
    assert_eq!(params[1], 1.0, "a zero moment moves nothing");
}

#[test]
fn adam_step_matches_hand_arithmetic() {
    // Two steps on three parameters, lr 0.1, betas 0.9 / 0.999, eps 1e-8.
    //
    // Step 1 (bias corrections 1 - 0.9 = 0.1 and 1 - 0.999 = 0.001, so the
    // step size is 0.1 / 0.1 = 1 and sqrt(0.001) = 0.0316228):
    //   p0 = 1, g = 0.5, grad_scale 1:
    //     m = 0.1 * 0.5 = 0.05; v = 0.001 * 0.25 = 0.00025
    //     denom = sqrt(0.00025) / sqrt(0.001) + 1e-8 = 0.5 + 1e-8
    //     p = 1 - 1 * 0.05 / 0.5 = 0.9
    //   p1 = -2, g = -4: m = -0.4, v = 0.016, denom = 0.126491 / 0.0316228
    //     = 4, p = -2 + 0.4 / 4 = -1.9
    //   p2 = 3, g = 0: m = v = 0, p stays 3 (0 / eps).
    // (At step 1 Adam moves each parameter by lr * sign(g).)
    //
    // Step 2 with grad_scale 0.5 and raw gradients (2, 0, 8), so the scaled
    // gradients are (1, 0, 4); corrections 1 - 0.81 = 0.19 and
    // 1 - 0.998001 = 0.001999, step size 0.1 / 0.19 = 0.5263158,
    // sqrt(0.001999) = 0.0447102:
    //   p0: m = 0.9 * 0.05 + 0.1 * 1 = 0.145
    //       v = 0.999 * 0.00025 + 0.001 * 1 = 0.00124975
    //       denom = sqrt(v) / 0.0447102 + 1e-8 = 0.0353518 / 0.0447102 = 0.7906881
    //       p = 0.9 - 0.5263158 * 0.145 / 0.7906881 = 0.9 - 0.0965182 = 0.8034818
    //   p1: m = 0.9 * -0.4 = -0.36; v = 0.999 * 0.016 = 0.015984
    //       denom = 0.1264278 / 0.0447102 = 2.8277196
    //       p = -1.9 + 0.5263158 * 0.36 / 2.8277196 = -1.9 + 0.0670058 = -1.8329942
    //   p2: m = 0.1 * 4 = 0.4, v = 0.001 * 16 = 0.016
    //       denom = 0.1264911 / 0.0447102 = 2.8291345
    //       p = 3 - 0.5263158 * 0.4 / 2.8291345 = 3 - 0.0744137 = 2.9255863
    let want_after = [[0.9f32, -1.9, 3.0], [0.8034818, -1.8329942, 2.9255863]];
    let grads = [[0.5f32, -4.0, 0.0], [2.0, 0.0, 8.0]];
    let grad_scales = [1.0f32, 0.5];
    for path in paths() {
        let mut cpu = CpuBackend::with_path(path);
        let mut params = vec![1.0f32, -2.0, 3.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        for step in 0..2 {
            let adam = AdamStep {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                step: step as u64 + 1,
                grad_scale: grad_scales[step],
            };
            cpu.adam(
                &mut params,
                &grads[step].to_vec(),
                &mut m,
                &mut v,
                3,
                &adam,
                None,
            )
            .unwrap();
            for i in 0..3 {
                let err = (params[i] - want_after[step][i]).abs();
                assert!(
                    err < 2e-6,
                    "{}: step {} param {i}: got {}, want {}",
                    path.name(),
                    step + 1,
                    params[i],
                    want_after[step][i]
                );
            }
        }
    }
}

#[test]
fn adam_matches_reference_on_random_values() {
    let mut rng = seeded("adam_matches_reference_on_random_values");
    for path in paths() {
        let len = rng.range(1, 100_000);
        let mut params: Vec<f32> = (0..len).map(|_| rng.uniform(1.0)).collect();
        let grads: Vec<f32> = (0..len).map(|_| rng.uniform(10.0)).collect();
        let mut m: Vec<f32> = (0..len).map(|_| rng.uniform(0.1)).collect();
        let mut v: Vec<f32> = (0..len).map(|_| rng.uniform(0.01).abs()).collect();
        let step = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: rng.range(1, 5000) as u64,
            grad_scale: 0.25,
        };
        let (p0, m0, v0) = (params.clone(), m.clone(), v.clone());
        // One element past `len` must stay as it is.
        params.push(5.0);
        let mut cpu = CpuBackend::with_path(path);
        cpu.adam(&mut params, &grads, &mut m, &mut v, len, &step, None)
            .unwrap();
        assert_eq!(params[len], 5.0);
        let t = step.step as f64;
        let (b1, b2) = (step.beta1 as f64, step.beta2 as f64);
        let mut worst = 0.0f64;
        for i in 0..len {
            let g = grads[i] as f64 * step.grad_scale as f64;
            let m1 = b1 * m0[i] as f64 + (1.0 - b1) * g;
            let v1 = b2 * v0[i] as f64 + (1.0 - b2) * g * g;
            let denom = v1.sqrt() / (1.0 - b2.powf(t)).sqrt() + step.eps as f64;
            let update = step.lr as f64 / (1.0 - b1.powf(t)) * m1 / denom;
            let want = p0[i] as f64 - update;
            let scale_m = (b1 * m0[i] as f64).abs() + ((1.0 - b1) * g).abs();
            let err_m = (m[i] as f64 - m1).abs() / (scale_m + 1e-30);
            let err_v = (v[i] as f64 - v1).abs() / (v1.abs() + 1e-30);
            // The new parameter is the update rounded into float32: allow
            // one rounding of the parameter plus a relative error on the
            // update at the size of the terms of m (which may cancel).
            let update_scale = step.lr as f64 / (1.0 - b1.powf(t)) * scale_m / denom;
            let allowed = f32::EPSILON as f64 * want.abs() + 1e-5 * update_scale;
            let err_p = (params[i] as f64 - want).abs();
            assert!(err_m < 1e-5 && err_v < 1e-5, "{}: moment {i}", path.name());
            assert!(
                err_p <= allowed,
                "{}: param {i}: {} vs {want}",
                path.name(),
                params[i]
            );
            worst = worst.max(err_m).max(err_v);
        }
        println!(
            "{}: Adam moments, worst relative error {worst:.2e}",
            path.name()
        );
    }
}

/// LazyAdam: marked rows of the block get exactly Adam's update (checked
/// against the float64 reference above through the dense call), unmarked
/// rows keep weights and moments bit for bit, and everything past the
/// block is dense Adam.
#[test]
fn lazy_adam_updates_only_the_marked_rows() {
    let mut rng = seeded("lazy_adam_updates_only_the_marked_rows");
    for path in paths() {
        let (rows, width) = (rng.range(1, 3000), rng.range(1, 200));
        let len = rows * width + rng.range(0, 5000);
        let random = |rng: &mut Rng, scale: f32| -> Vec<f32> {
            (0..len).map(|_| rng.uniform(scale)).collect()
        };
        let params = random(&mut rng, 1.0);
        let grads = random(&mut rng, 10.0);
        let m = random(&mut rng, 0.1);
        let v: Vec<f32> = random(&mut rng, 0.01).iter().map(|x| x.abs()).collect();
        let step = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: rng.range(1, 5000) as u64,
            grad_scale: 0.5,
        };

        // A batch's tokens, padding included; earlier stamps elsewhere.
        let stamp = rng.range(2, 1000) as i32;
        let mut marks: Vec<i32> = (0..rows)
            .map(|_| rng.below(stamp as usize) as i32)
            .collect();
        let tokens: Vec<i32> = (0..rng.range(1, 2000))
            .map(|_| rng.below(rows) as i32)
            .collect();
        let mut cpu = CpuBackend::with_path(path);
        cpu.mark_rows(&tokens, tokens.len(), &mut marks, stamp)
            .unwrap();
        for (r, &mark) in marks.iter().enumerate() {
            assert_eq!(mark == stamp, tokens.contains(&(r as i32)), "row {r}");
        }

        let (mut dense_p, mut dense_m, mut dense_v) = (params.clone(), m.clone(), v.clone());
        cpu.adam(
            &mut dense_p,
            &grads,
            &mut dense_m,
            &mut dense_v,
            len,
            &step,
            None,
        )
        .unwrap();
        let (mut lazy_p, mut lazy_m, mut lazy_v) = (params.clone(), m.clone(), v.clone());
        let lazy = LazyRows {
            marks: &marks,
            stamp,
            rows,
            width,
        };
        cpu.adam(
            &mut lazy_p,
            &grads,
            &mut lazy_m,
            &mut lazy_v,
            len,
            &step,
            Some(&lazy),
        )
        .unwrap();

        let bits = |x: &[f32]| -> Vec<u32> { x.iter().map(|f| f.to_bits()).collect() };
        for i in 0..len {
            let used = i >= rows * width || marks[i / width] == stamp;
            let (want_p, want_m, want_v) = if used {
                (dense_p[i], dense_m[i], dense_v[i])
            } else {
                (params[i], m[i], v[i])
            };
            assert_eq!(
                bits(&[lazy_p[i], lazy_m[i], lazy_v[i]]),
                bits(&[want_p, want_m, want_v]),
                "{}: element {i} (row {}, used {used})",
                path.name(),
                i / width
            );
        }
    }
}

#[test]
fn mark_rows_refuses_a_token_past_the_table() {
    let mut cpu = CpuBackend::new();
    let mut marks = vec![0; 4];
    let err = cpu
        .mark_rows(&vec![1, 4], 2, &mut marks, 7)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 4 outside the 4 embedding rows"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// A whole step: thread-count independence and finite differences

/// Everything one training step produces.
#[derive(PartialEq, Debug)]
struct StepOutputs {
    h: Vec<u32>,
    win: Vec<i32>,
    hidden: Vec<u32>,
    logits: Vec<u32>,
    dlogits: Vec<u32>,
    loss_sums: Vec<u32>,
    dh_tasks: Vec<u32>,
    dh: Vec<u32>,
    gram: Vec<u64>,
    grads: Vec<u32>,
    params: Vec<u32>,
    m: Vec<u32>,
    v: Vec<u32>,
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

struct Labelled {
    labels: Vec<i32>,
    /// `w_i / n_i` per task, or 0 when a task has no label.
    scales: Vec<f32>,
    weights: Vec<f32>,
}

fn random_labels(rng: &mut Rng, shape: &Shape, rows: usize) -> Labelled {
    let mut labels = Vec::new();
    let mut scales = Vec::new();
    let mut weights = Vec::new();
    for head in &shape.dims.heads {
        let mut n = 0;
        for _ in 0..rows {
            if rng.chance(25) {
                labels.push(-1);
            } else {
                labels.push(rng.below(head.classes) as i32);
                n += 1;
            }
        }
        let w = 0.5 + rng.uniform(0.5).abs();
        weights.push(w);
        scales.push(if n == 0 { 0.0 } else { w / n as f32 });
    }
    Labelled {
        labels,
        scales,
        weights,
    }
}

/// Forward, loss, backward and Adam through the backend (all outputs
/// poisoned first). Returns the outputs and the loss.
fn backend_step(
    cpu: &mut CpuBackend,
    shape: &Shape,
    params: &[f32],
    texts: &Texts,
    labelled: &Labelled,
) -> (StepOutputs, Vec<f32>, f64) {
    let rows = texts.rows;
    let (filters, sum_h, sum_c, tasks) = (
        shape.dims.filters,
        shape.sum_hidden(),
        shape.sum_classes(),
        shape.tasks(),
    );
    let params_in = params.to_vec();
    let (h, win) = encoder_forward(cpu, shape, &params_in, texts);
    let (mut hidden, mut logits) = (nan_vec(rows * sum_h), nan_vec(rows * sum_c));
    cpu.heads_forward(shape, &params_in, &h, rows, &mut hidden, &mut logits)
        .unwrap();
    let (mut dlogits, mut loss_sums) = (nan_vec(rows * sum_c), nan_vec(tasks));
    cpu.softmax_cross_entropy(
        shape,
        &logits,
        &labelled.labels,
        &vec![1.0; sum_c],
        rows,
        &labelled.scales,
        &mut dlogits,
        &mut loss_sums,
    )
    .unwrap();
    let mut grads = nan_vec(shape.len);
    let mut dh_tasks = nan_vec(tasks * rows * filters);
    cpu.heads_backward(
        shape,
        &params_in,
        &h,
        &hidden,
        &dlogits,
        rows,
        &mut grads,
        &mut dh_tasks,
    )
    .unwrap();
    let gram = cpu.task_gram(&dh_tasks, tasks, rows * filters).unwrap();
    let mut dh = nan_vec(rows * filters);
    cpu.combine_tasks(&dh_tasks, &vec![1.0; tasks], rows * filters, &mut dh)
        .unwrap();
    cpu.encoder_backward(shape, &params_in, &texts.batch(), &h, &win, &dh, &mut grads)
        .unwrap();
    let grads_out = grads.clone();

    let mut params_after = params_in.clone();
    let (mut m, mut v) = (vec![0.01; shape.len], vec![0.001; shape.len]);
    let adam = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 3,
        grad_scale: 1.0,
    };
    cpu.adam(
        &mut params_after,
        &grads,
        &mut m,
        &mut v,
        shape.len,
        &adam,
        None,
    )
    .unwrap();

    let loss: f64 = loss_sums
        .iter()
        .zip(&labelled.scales)
        .map(|(&s, &scale)| s as f64 * scale as f64)
        .sum();
    let outputs = StepOutputs {
        h: bits(&h),
        win,
        hidden: bits(&hidden),
        logits: bits(&logits),
        dlogits: bits(&dlogits),
        loss_sums: bits(&loss_sums),
        dh_tasks: bits(&dh_tasks),
        dh: bits(&dh),
        gram: gram.iter().map(|g| g.to_bits()).collect(),
        grads: bits(&grads),
        params: bits(&params_after),
        m: bits(&m),
        v: bits(&v),
    };
    (outputs, grads_out, loss)
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = seeded("results_do_not_depend_on_the_thread_count");
    // Large enough that every parallel split has several parts: rows past
    // one row block, filters past one filter block, a vocabulary of many
    // row chunks, parameters of several Adam chunks.
    let shape = Shape::new(Dims {
        vocab: 700,
        embed: 40,
        filters: 45,
        kernel: 3,
        heads: vec![
            HeadDims {
                hidden: 30,
                classes: 7,
            },
            HeadDims {
                hidden: 20,
                classes: 2,
            },
        ],
    });
    let params = random_params(&mut rng, &shape);
    let mut texts = random_texts(&mut rng, &shape, 150);
    // Frequent tokens: many positions share embedding rows.
    for t in texts.tokens.iter_mut() {
        if *t > 0 && rng.chance(50) {
            *t = 1 + rng.below(5) as i32;
        }
    }
    let labelled = random_labels(&mut rng, &shape, texts.rows);
    for path in paths() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                backend_step(
                    &mut CpuBackend::with_path(path),
                    &shape,
                    &params,
                    &texts,
                    &labelled,
                )
                .0
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(
                one == run(threads),
                "{}: {threads} threads differ from 1 thread",
                path.name()
            );
        }
        println!("{}: 1, 2 and 3 threads give identical bits", path.name());
    }
}

/// The model's loss in float64, straight from DESIGN.md.
fn reference_loss(shape: &Shape, params: &[f64], texts: &Texts, labelled: &Labelled) -> f64 {
    let d = &shape.dims;
    let (filters, kernel) = (d.filters, d.kernel);
    let mut loss = 0.0;
    let mut per_task = vec![(0.0f64, 0usize); shape.tasks()];
    for b in 0..texts.rows {
        let h: Vec<f64> = (0..filters)
            .map(|f| {
                (0..texts.windows(b, kernel))
                    .map(|t| window_z(shape, params, texts, b, t, f).0)
                    .fold(f64::NEG_INFINITY, f64::max)
                    .max(0.0)
            })
            .collect();
        for (i, (spans, head)) in shape.heads.iter().zip(&d.heads).enumerate() {
            let label = labelled.labels[i * texts.rows + b];
            if label < 0 {
                continue;
            }
            let a: Vec<f64> = (0..head.hidden)
                .map(|u| {
                    let mut z = params[spans.hidden_bias.offset + u];
                    for f in 0..filters {
                        z += params[spans.hidden_weight.offset + u * filters + f] * h[f];
                    }
                    z.max(0.0)
                })
                .collect();
            let o: Vec<f64> = (0..head.classes)
                .map(|c| {
                    let mut z = params[spans.out_bias.offset + c];
                    for u in 0..head.hidden {
                        z += params[spans.out_weight.offset + c * head.hidden + u] * a[u];
                    }
                    z
                })
                .collect();
            let max = o.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_sum = o.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            per_task[i].0 += log_sum - (o[label as usize] - max);
            per_task[i].1 += 1;
        }
    }
    for (i, &(sum, n)) in per_task.iter().enumerate() {
        if n > 0 {
            loss += labelled.weights[i] as f64 * sum / n as f64;
        }
    }
    loss
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    let mut rng = seeded("whole_model_gradient_matches_finite_differences");
    let shape = Shape::new(Dims {
        vocab: 12,
        embed: 5,
        filters: 6,
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
    });
    let width = 9;
    let lengths = [0, 1, 2, 3, 5, 9, 7];
    let rows = lengths.len();
    let mut tokens = vec![0; rows * width];
    for (b, &len) in lengths.iter().enumerate() {
        for p in 0..len {
            tokens[b * width + p] = rng.range(1, shape.dims.vocab - 1) as i32;
        }
    }
    let texts = Texts {
        tokens,
        lengths: lengths.map(|l| l as i32).to_vec(),
        rows,
        width,
    };
    let params: Vec<f32> = {
        let mut p: Vec<f32> = (0..shape.len).map(|_| rng.uniform(1.0)).collect();
        p[..shape.dims.embed].fill(0.0);
        p
    };
    let labelled = random_labels(&mut rng, &shape, rows);
    let p64 = to_f64(&params);
    let loss64 = reference_loss(&shape, &p64, &texts, &labelled);

    let task_names: Vec<String> = (0..shape.tasks()).map(|i| format!("task{i}")).collect();
    let groups = shape.named_tensors(&task_names);

    for path in paths() {
        let mut cpu = CpuBackend::with_path(path);
        let (_, grads, loss) = backend_step(&mut cpu, &shape, &params, &texts, &labelled);
        let loss_err = (loss - loss64).abs() / loss64.abs().max(1e-12);
        assert!(
            loss_err < 1e-5,
            "{}: loss {loss} vs reference {loss64}",
            path.name()
        );
        println!(
            "{}: loss {loss:.6} vs float64 {loss64:.6} (relative {loss_err:.1e})",
            path.name()
        );

        let eps = 1e-6;
        for (name, _, span) in &groups {
            let (mut diff2, mut norm2) = (0.0f64, 0.0f64);
            for i in span.range() {
                // The PAD row is never trained.
                let numeric = if i < shape.embedding.offset + shape.dims.embed {
                    0.0
                } else {
                    let mut plus = p64.clone();
                    plus[i] += eps;
                    let mut minus = p64.clone();
                    minus[i] -= eps;
                    let up = reference_loss(&shape, &plus, &texts, &labelled);
                    let down = reference_loss(&shape, &minus, &texts, &labelled);
                    (up - down) / (2.0 * eps)
                };
                diff2 += (grads[i] as f64 - numeric).powi(2);
                norm2 += numeric.powi(2).max((grads[i] as f64).powi(2));
            }
            let relative = diff2.sqrt() / norm2.sqrt().max(1e-12);
            println!(
                "{}: {name:<26} |grad| {:.3e}, error vs central differences {relative:.2e}",
                path.name(),
                norm2.sqrt()
            );
            if !name.starts_with("heads") {
                assert!(norm2 > 0.0, "{name}: no gradient at all");
            }
            assert!(
                relative < 1e-4,
                "{}: {name} relative error {relative:.2e}",
                path.name()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Bad input

#[test]
fn bad_input_is_a_clear_error() {
    let shape = Shape::new(Dims {
        vocab: 10,
        embed: 4,
        filters: 3,
        kernel: 3,
        heads: vec![HeadDims {
            hidden: 2,
            classes: 2,
        }],
    });
    let params = vec![0.1f32; shape.len];
    let mut cpu = CpuBackend::new();
    let (mut h, mut win) = (vec![0.0; 6], vec![0; 6]);
    let mut forward = |tokens: Vec<i32>, lengths: Vec<i32>, width: usize| {
        let batch = TokenBatch {
            tokens: &tokens,
            lengths: &lengths,
            rows: 2,
            width,
        };
        cpu.encoder_forward(&shape, &params, &batch, &mut h, &mut win)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = forward(vec![1, 2, 10, 0, 0, 0, 0, 0], vec![3, 0], 4);
    assert!(err.contains("text 0, position 2: token id 10"), "{err}");
    let err = forward(vec![1, 2, 3, 0, -1, 0, 0, 0], vec![3, 1], 4);
    assert!(err.contains("token id -1"), "{err}");
    let err = forward(vec![0; 8], vec![0, 5], 4);
    assert!(err.contains("text 1: length 5"), "{err}");
    let err = forward(vec![0; 4], vec![0, 0], 2);
    assert!(err.contains("less than the kernel width 3"), "{err}");
    let err = forward(vec![0; 5], vec![0, 0], 4);
    assert!(err.contains("tokens holds 5 values"), "{err}");

    let tokens = vec![1, 2, 3, 4, 5, 6, 7, 8];
    let lengths = vec![4, 3];
    let batch = TokenBatch {
        tokens: &tokens,
        lengths: &lengths,
        rows: 2,
        width: 4,
    };
    let mut grads = vec![0.0; shape.len];
    let bad_win = vec![0, 1, 2, 0, 0, 0];
    let err = cpu
        .encoder_backward(
            &shape,
            &params,
            &batch,
            &vec![1.0; 6],
            &bad_win,
            &vec![1.0; 6],
            &mut grads,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("win[0, 2] = 2"), "{err}");

    let mut short = vec![0.0; 5];
    let err = cpu
        .encoder_forward(&shape, &params, &batch, &mut short, &mut vec![0; 6])
        .unwrap_err()
        .to_string();
    assert!(err.contains("h holds 5 values, the call needs 6"), "{err}");

    let (mut dlogits, mut sums) = (vec![0.0; 4], vec![0.0; 1]);
    let err = cpu
        .softmax_cross_entropy(
            &shape,
            &vec![0.0; 4],
            &vec![1, 2],
            &vec![1.0; 2],
            2,
            &[1.0],
            &mut dlogits,
            &mut sums,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 2 of task 0, row 1"), "{err}");

    let step = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 0,
        grad_scale: 1.0,
    };
    let (mut p, mut m, mut v) = (vec![0.0; 2], vec![0.0; 2], vec![0.0; 2]);
    let err = cpu
        .adam(&mut p, &vec![0.0; 2], &mut m, &mut v, 2, &step, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("count from 1"), "{err}");
}

#[test]
fn describe_names_the_code_path() {
    for path in paths() {
        let text = CpuBackend::with_path(path).describe();
        assert!(text.contains(path.name()), "{text}");
    }
}

#[test]
fn an_empty_batch_gives_zero_encoder_gradients() {
    let mut rng = seeded("an_empty_batch_gives_zero_encoder_gradients");
    let shape = random_shape(&mut rng);
    let params = random_params(&mut rng, &shape);
    let width = shape.dims.kernel + 2;
    let texts = Texts {
        tokens: Vec::new(),
        lengths: Vec::new(),
        rows: 0,
        width,
    };
    for path in paths() {
        let mut cpu = CpuBackend::with_path(path);
        let (h, win) = encoder_forward(&mut cpu, &shape, &params, &texts);
        let mut grads = poisoned_grads(&shape);
        cpu.encoder_backward(&shape, &params, &texts.batch(), &h, &win, &h, &mut grads)
            .unwrap();
        let encoder_end = shape.conv_bias.offset + shape.conv_bias.len;
        assert!(
            grads[..encoder_end].iter().all(|&g| g == 0.0),
            "{}",
            path.name()
        );
        assert!(grads[encoder_end..].iter().all(|&g| g == UNTOUCHED));
    }
}

#[test]
fn buffers_upload_and_download() {
    let cpu = CpuBackend::new();
    let mut floats = cpu.floats(5).unwrap();
    assert_eq!(floats, vec![0.0; 5]);
    cpu.upload_floats(&mut floats, &[1.5, -2.0, 3.25]).unwrap();
    let mut back = [0.0f32; 4];
    cpu.download_floats(&floats, &mut back).unwrap();
    assert_eq!(back, [1.5, -2.0, 3.25, 0.0]);
    let err = cpu
        .upload_floats(&mut floats, &[0.0; 6])
        .unwrap_err()
        .to_string();
    assert!(err.contains("upload of 6 floats into 5"), "{err}");
    let err = cpu
        .download_floats(&floats, &mut [0.0; 6])
        .unwrap_err()
        .to_string();
    assert!(err.contains("download of 6 floats from 5"), "{err}");

    let mut ints = cpu.ints(3).unwrap();
    assert_eq!(ints, vec![0; 3]);
    cpu.upload_ints(&mut ints, &[7, -1]).unwrap();
    let mut back = [9i32; 3];
    cpu.download_ints(&ints, &mut back).unwrap();
    assert_eq!(back, [7, -1, 0]);
    assert!(cpu.upload_ints(&mut ints, &[0; 4]).is_err());
    assert!(cpu.download_ints(&ints, &mut [0; 4]).is_err());
    cpu.synchronize().unwrap();
}
