//! The model's dimensions and where each parameter tensor lives in the one
//! flat parameter buffer.
//!
//! All parameters sit in a single `f32` buffer so that the optimiser is one
//! pass over one slice (one launch on a GPU). The order is chosen so that the
//! first layers of every task head are adjacent: `hidden.weight` of task 0,
//! then of task 1, ... form the concatenated `[sum H, F]` matrix that the
//! heads' forward multiplies in one GEMM.

use serde::{Deserialize, Serialize};

/// Sizes that fix the model's function (everything but the weights).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    /// Rows of the embedding table, including PAD (0) and UNK (1).
    pub vocab: usize,
    /// Embedding width `D`.
    pub embed: usize,
    /// Convolution filters `F` (= width of the pooled features `h`).
    pub filters: usize,
    /// Convolution width `k`.
    pub kernel: usize,
    /// Per task: hidden width `H_i` and number of classes `C_i`.
    pub heads: Vec<HeadDims>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadDims {
    pub hidden: usize,
    pub classes: usize,
}

/// A named slice of the flat parameter buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Offsets of one task head's tensors in the flat buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadSpans {
    /// `[H, F]`, row-major (PyTorch `Linear.weight`).
    pub hidden_weight: Span,
    /// `[H]`
    pub hidden_bias: Span,
    /// `[C, H]`
    pub out_weight: Span,
    /// `[C]`
    pub out_bias: Span,
}

/// Dimensions plus the flat-buffer layout derived from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub dims: Dims,
    /// `[V, D]`; row 0 (PAD) is zero and never trained.
    pub embedding: Span,
    /// `[F, D, k]` (PyTorch `Conv1d.weight`).
    pub conv_weight: Span,
    /// `[F]`
    pub conv_bias: Span,
    /// All tasks' `hidden.weight`, back to back: the `[sum H, F]` matrix.
    pub hidden_weights: Span,
    /// All tasks' `hidden.bias`, back to back: `[sum H]`.
    pub hidden_biases: Span,
    pub heads: Vec<HeadSpans>,
    /// Total number of parameters.
    pub len: usize,
}

impl Shape {
    pub fn new(dims: Dims) -> Shape {
        let mut next = 0;
        let mut take = |len: usize| {
            let span = Span { offset: next, len };
            next += len;
            span
        };

        let embedding = take(dims.vocab * dims.embed);
        let conv_weight = take(dims.filters * dims.embed * dims.kernel);
        let conv_bias = take(dims.filters);

        let hidden_weight: Vec<Span> = dims
            .heads
            .iter()
            .map(|h| take(h.hidden * dims.filters))
            .collect();
        let hidden_bias: Vec<Span> = dims.heads.iter().map(|h| take(h.hidden)).collect();
        let out: Vec<(Span, Span)> = dims
            .heads
            .iter()
            .map(|h| (take(h.classes * h.hidden), take(h.classes)))
            .collect();

        let sum_hidden: usize = dims.heads.iter().map(|h| h.hidden).sum();
        let first_hidden = hidden_weight
            .first()
            .map_or(conv_bias.offset + conv_bias.len, |s| s.offset);
        let first_bias = hidden_bias.first().map_or(first_hidden, |s| s.offset);
        let heads = (0..dims.heads.len())
            .map(|i| HeadSpans {
                hidden_weight: hidden_weight[i],
                hidden_bias: hidden_bias[i],
                out_weight: out[i].0,
                out_bias: out[i].1,
            })
            .collect();

        Shape {
            embedding,
            conv_weight,
            conv_bias,
            hidden_weights: Span {
                offset: first_hidden,
                len: sum_hidden * dims.filters,
            },
            hidden_biases: Span {
                offset: first_bias,
                len: sum_hidden,
            },
            heads,
            len: next,
            dims,
        }
    }

    pub fn tasks(&self) -> usize {
        self.dims.heads.len()
    }

    /// `sum H_i`: the width of all tasks' hidden activations side by side.
    pub fn sum_hidden(&self) -> usize {
        self.dims.heads.iter().map(|h| h.hidden).sum()
    }

    /// `sum C_i`: the width of all tasks' logits side by side.
    pub fn sum_classes(&self) -> usize {
        self.dims.heads.iter().map(|h| h.classes).sum()
    }

    /// Column where task `i`'s hidden units start in the `[B, sum H]` activations.
    pub fn hidden_offset(&self, task: usize) -> usize {
        self.dims.heads[..task].iter().map(|h| h.hidden).sum()
    }

    /// Column where task `i`'s logits start in the `[B, sum C]` logits.
    pub fn class_offset(&self, task: usize) -> usize {
        self.dims.heads[..task].iter().map(|h| h.classes).sum()
    }

    /// Parameter tensors with their PyTorch names and shapes, in buffer order.
    pub fn named_tensors(&self, task_names: &[String]) -> Vec<(String, Vec<usize>, Span)> {
        let d = &self.dims;
        let mut out = vec![
            (
                "embedding.weight".to_string(),
                vec![d.vocab, d.embed],
                self.embedding,
            ),
            (
                "conv.weight".to_string(),
                vec![d.filters, d.embed, d.kernel],
                self.conv_weight,
            ),
            ("conv.bias".to_string(), vec![d.filters], self.conv_bias),
        ];
        for (i, (spans, head)) in self.heads.iter().zip(&d.heads).enumerate() {
            let name = &task_names[i];
            out.push((
                format!("heads.{name}.hidden.weight"),
                vec![head.hidden, d.filters],
                spans.hidden_weight,
            ));
            out.push((
                format!("heads.{name}.hidden.bias"),
                vec![head.hidden],
                spans.hidden_bias,
            ));
            out.push((
                format!("heads.{name}.out.weight"),
                vec![head.classes, head.hidden],
                spans.out_weight,
            ));
            out.push((
                format!("heads.{name}.out.bias"),
                vec![head.classes],
                spans.out_bias,
            ));
        }
        out.sort_by_key(|(_, _, span)| span.offset);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> Dims {
        Dims {
            vocab: 7,
            embed: 3,
            filters: 4,
            kernel: 2,
            heads: vec![
                HeadDims {
                    hidden: 5,
                    classes: 2,
                },
                HeadDims {
                    hidden: 6,
                    classes: 3,
                },
            ],
        }
    }

    #[test]
    fn spans_tile_the_buffer_without_gaps() {
        let shape = Shape::new(dims());
        let names = vec!["a".to_string(), "b".to_string()];
        let mut next = 0;
        for (name, dims, span) in shape.named_tensors(&names) {
            assert_eq!(span.offset, next, "{name} does not follow its predecessor");
            assert_eq!(span.len, dims.iter().product::<usize>(), "{name}");
            next += span.len;
        }
        assert_eq!(next, shape.len);
    }

    #[test]
    fn hidden_weights_are_one_concatenated_matrix() {
        let shape = Shape::new(dims());
        assert_eq!(
            shape.hidden_weights.offset,
            shape.heads[0].hidden_weight.offset
        );
        assert_eq!(
            shape.heads[1].hidden_weight.offset,
            shape.heads[0].hidden_weight.offset + 5 * 4
        );
        assert_eq!(shape.hidden_weights.len, 11 * 4);
        assert_eq!(
            shape.hidden_biases.offset,
            shape.heads[0].hidden_bias.offset
        );
        assert_eq!(
            shape.heads[1].hidden_bias.offset,
            shape.heads[0].hidden_bias.offset + 5
        );
        assert_eq!(shape.sum_hidden(), 11);
        assert_eq!(shape.sum_classes(), 5);
        assert_eq!(shape.class_offset(1), 2);
        assert_eq!(shape.hidden_offset(1), 5);
    }
}
