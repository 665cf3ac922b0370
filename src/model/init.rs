//! Initial weights, distributed as PyTorch initialises the same modules, so
//! training starts from the same place as the PyTorch equivalent.

use crate::model::Shape;
use crate::rng::Rng;

/// Whether the parameters of `shape` and the three buffers of their size
/// that training keeps (gradients and two moments) can be allocated: an
/// error naming the sizes instead of an abort part-way through.
pub fn check_fits(shape: &Shape) -> anyhow::Result<()> {
    let floats = shape.len.checked_mul(4);
    let fits = floats.is_some_and(|n| Vec::<f32>::new().try_reserve_exact(n).is_ok());
    if !fits {
        let d = &shape.dims;
        anyhow::bail!(
            "a model of {} parameters (vocabulary {}, --embed-dim {}, --filters {}, \
             --kernel-size {}) does not fit in memory with its training state",
            shape.len,
            d.vocab,
            d.embed,
            d.filters,
            d.kernel
        );
    }
    Ok(())
}

/// Fresh parameters for `shape`:
/// - `embedding.weight ~ N(0, 1)` with row 0 (PAD) zero (`nn.Embedding`);
/// - `conv.*` and every `Linear` weight and bias `~ U(-1/sqrt(fan_in),
///   1/sqrt(fan_in))`, which is what PyTorch's default Kaiming-uniform with
///   `a = sqrt(5)` reduces to (`fan_in = D * k` for the convolution).
pub fn initial_params(shape: &Shape, rng: &mut Rng) -> Vec<f32> {
    let d = &shape.dims;
    let mut params = vec![0.0f32; shape.len];

    for v in &mut params[shape.embedding.range()][d.embed..] {
        *v = rng.normal() as f32;
    }

    let mut uniform = |span: std::ops::Range<usize>, fan_in: usize, params: &mut [f32]| {
        let bound = 1.0 / (fan_in as f64).sqrt();
        for v in &mut params[span] {
            *v = rng.uniform(-bound, bound) as f32;
        }
    };
    let conv_fan_in = d.embed * d.kernel;
    uniform(shape.conv_weight.range(), conv_fan_in, &mut params);
    uniform(shape.conv_bias.range(), conv_fan_in, &mut params);
    for (spans, head) in shape.heads.iter().zip(&d.heads) {
        uniform(spans.hidden_weight.range(), d.filters, &mut params);
        uniform(spans.hidden_bias.range(), d.filters, &mut params);
        uniform(spans.out_weight.range(), head.hidden, &mut params);
        uniform(spans.out_bias.range(), head.hidden, &mut params);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dims, HeadDims};

    #[test]
    fn padding_row_is_zero_and_bounds_hold() {
        let shape = Shape::new(Dims {
            vocab: 50,
            embed: 8,
            filters: 6,
            kernel: 3,
            heads: vec![HeadDims {
                hidden: 4,
                classes: 3,
            }],
        });
        let params = initial_params(&shape, &mut Rng::new(1));
        assert!(params[..8].iter().all(|&v| v == 0.0));
        assert!(params[8..shape.embedding.len].iter().all(|&v| v != 0.0));
        let bound = 1.0 / (24.0f32).sqrt();
        assert!(params[shape.conv_weight.range()]
            .iter()
            .all(|v| v.abs() <= bound));
        let out_bound = 0.5;
        assert!(params[shape.heads[0].out_weight.range()]
            .iter()
            .all(|v| v.abs() <= out_bound));
    }
}
