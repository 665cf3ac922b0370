//! ONNX export: the whole model, tokens in, one probability tensor per task
//! out, for any batch size and any text length.
//!
//! Graph (ONNX opset [`OPSET`], IR version [`IR_VERSION`]):
//!
//! - input `tokens`: int64 `[batch, length]`, both dimensions dynamic;
//!   texts right-padded with 0 (PAD), unknown words 1 (UNK), texts cut to
//!   `max_len` tokens by the caller (the tokenizer settings and vocabulary
//!   are in the metadata);
//! - `len_b` = number of non-zero tokens of row `b`;
//! - the token rows are padded with `k` more zeros, so a text shorter than
//!   the kernel width `k` is padded up to `k` and there is always a window;
//! - `Gather` (embedding), `Transpose`, `Conv` over time: `z [batch, F, T]`;
//! - windows `t > max(len_b, k) - k` lie past the text's end: `Where` sets
//!   them to -inf, so a prediction never depends on the other texts in the
//!   batch nor on how much padding they bring;
//! - `ReduceMax` over time (never a `MaxPool` whose window would be frozen
//!   to one example length), `Relu`: the pooled features `h [batch, F]`;
//! - per task: `Gemm`, `Relu`, `Gemm`, `Softmax`; the output carries the
//!   task's name: float32 probabilities `[batch, C]`, classes in the order
//!   of the task's label list.
//!
//! The file is written with `prost` from the message declarations in
//! [`super::proto`].

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Result};
use prost::Message;

use super::proto::{
    data_type, tensor_shape_proto, type_proto, AttributeProto, AttributeType, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use super::{check_task_names, metadata_entries, write_output};
use crate::model::Model;

/// Operator set of the default domain the graph binds to. 17 is the last
/// where `ReduceMax` takes its axes as an attribute; every runtime of the
/// past years (onnxruntime 1.13 on) implements it.
pub const OPSET: i64 = 17;

/// IR version that goes with opset 17.
pub const IR_VERSION: i64 = 8;

/// Name of the graph's one input.
pub const INPUT: &str = "tokens";

/// Writes `model` as an ONNX file at `out` (atomically).
pub fn export_onnx(model: &Model, out: &Path) -> Result<()> {
    let bytes = onnx_bytes(model)?;
    write_output(out, &bytes)
}

/// The ONNX file's bytes.
pub fn onnx_bytes(model: &Model) -> Result<Vec<u8>> {
    Ok(onnx_model(model)?.encode_to_vec())
}

/// The ONNX model as a message (for tests that read it back).
pub fn onnx_model(model: &Model) -> Result<ModelProto> {
    check_task_names(model)?;
    let graph = build_graph(model)?;
    let metadata_props = metadata_entries(model)?
        .into_iter()
        .map(|(key, value)| StringStringEntryProto {
            key: Some(key),
            value: Some(value),
        })
        .collect();
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("polyhead".to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(
            "polyhead multi-task text classifier: int64 tokens [batch, length], right-padded \
             with 0, in; per task float32 probabilities [batch, classes] out. Tokenizer \
             settings, vocabulary and label names are in metadata_props."
                .to_string(),
        ),
        graph: Some(graph),
        metadata_props,
    })
}

/// Nodes, constants and the names already taken, so that no value is
/// defined twice (a task named like an internal value would be).
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    defined: HashSet<String>,
}

impl Graph {
    fn new() -> Graph {
        Graph {
            nodes: Vec::new(),
            initializers: Vec::new(),
            defined: HashSet::from([INPUT.to_string()]),
        }
    }

    fn define(&mut self, name: &str) -> Result<String> {
        if !self.defined.insert(name.to_string()) {
            bail!("the name {name:?} would be given to two values of the ONNX graph");
        }
        Ok(name.to_string())
    }

    fn node(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> Result<String> {
        let output = self.define(output)?;
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: Some(output.clone()),
            op_type: Some(op_type.to_string()),
            domain: None,
            attribute,
            doc_string: None,
        });
        Ok(output)
    }

    fn floats(&mut self, name: &str, dims: &[usize], values: &[f32]) -> Result<String> {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len());
        let name = self.define(name)?;
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type::FLOAT),
            name: Some(name.clone()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..TensorProto::default()
        });
        Ok(name)
    }

    fn ints(&mut self, name: &str, dims: &[usize], values: &[i64]) -> Result<String> {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len());
        let name = self.define(name)?;
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type::INT64),
            name: Some(name.clone()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..TensorProto::default()
        });
        Ok(name)
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..AttributeProto::default()
    }
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

/// A tensor type with named (dynamic) or fixed dimensions.
fn tensor_type(elem_type: i32, dims: &[Dim]) -> TypeProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Named(name) => {
                    tensor_shape_proto::dimension::Value::DimParam(name.to_string())
                }
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
            }),
            denotation: None,
        })
        .collect();
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(elem_type),
            shape: Some(TensorShapeProto { dim }),
        })),
        denotation: None,
    }
}

enum Dim {
    Named(&'static str),
    Fixed(usize),
}

fn build_graph(model: &Model) -> Result<GraphProto> {
    let shape = &model.shape;
    let d = &shape.dims;
    let params = &model.params;
    let k = d.kernel as i64;
    let mut g = Graph::new();

    // Encoder weights, under their model-file names.
    let embedding = g.floats(
        "embedding.weight",
        &[d.vocab, d.embed],
        &params[shape.embedding.range()],
    )?;
    let conv_weight = g.floats(
        "conv.weight",
        &[d.filters, d.embed, d.kernel],
        &params[shape.conv_weight.range()],
    )?;
    let conv_bias = g.floats("conv.bias", &[d.filters], &params[shape.conv_bias.range()])?;

    // Constants.
    let zero = g.ints("encoder/zero", &[], &[0])?;
    let one = g.ints("encoder/one", &[], &[1])?;
    let two = g.ints("encoder/two", &[], &[2])?;
    let kernel = g.ints("encoder/kernel", &[], &[k])?;
    let pads = g.ints("encoder/pads", &[4], &[0, 0, 0, k])?;
    let time_axis = g.ints("encoder/time_axis", &[1], &[1])?;
    let minus_infinity = g.floats("encoder/minus_infinity", &[], &[f32::NEG_INFINITY])?;

    // Text lengths: the non-zero tokens of each row, [batch, 1].
    let is_pad = g.node("Equal", &[INPUT, &zero], "encoder/is_pad", vec![])?;
    let is_token = g.node("Not", &[&is_pad], "encoder/is_token", vec![])?;
    let counted = g.node(
        "Cast",
        &[&is_token],
        "encoder/is_token_int",
        vec![int_attribute("to", data_type::INT64 as i64)],
    )?;
    let lengths = g.node(
        "ReduceSum",
        &[&counted, &time_axis],
        "encoder/lengths",
        vec![int_attribute("keepdims", 1)],
    )?;

    // Index of each text's last window: max(len, k) - k, [batch, 1].
    let covered = g.node("Max", &[&lengths, &kernel], "encoder/covered", vec![])?;
    let last_window = g.node("Sub", &[&covered, &kernel], "encoder/last_window", vec![])?;

    // Embed the tokens padded with k zeros, convolve over time.
    let padded = g.node("Pad", &[INPUT, &pads], "encoder/padded_tokens", vec![])?;
    let embedded = g.node("Gather", &[&embedding, &padded], "encoder/embedded", vec![])?;
    let channels_first = g.node(
        "Transpose",
        &[&embedded],
        "encoder/channels_first",
        vec![ints_attribute("perm", &[0, 2, 1])],
    )?;
    let z = g.node(
        "Conv",
        &[&channels_first, &conv_weight, &conv_bias],
        "encoder/z",
        vec![ints_attribute("kernel_shape", &[k])],
    )?;

    // Windows past each text's end drop out of the max.
    let z_shape = g.node("Shape", &[&z], "encoder/z_shape", vec![])?;
    let windows = g.node(
        "Gather",
        &[&z_shape, &two],
        "encoder/windows",
        vec![int_attribute("axis", 0)],
    )?;
    let window_index = g.node(
        "Range",
        &[&zero, &windows, &one],
        "encoder/window_index",
        vec![],
    )?;
    let past_end = g.node(
        "Less",
        &[&last_window, &window_index],
        "encoder/past_end",
        vec![],
    )?;
    let past_end = g.node(
        "Unsqueeze",
        &[&past_end, &time_axis],
        "encoder/past_end_per_filter",
        vec![],
    )?;
    let masked = g.node(
        "Where",
        &[&past_end, &minus_infinity, &z],
        "encoder/z_masked",
        vec![],
    )?;
    let pooled = g.node(
        "ReduceMax",
        &[&masked],
        "encoder/pooled",
        vec![ints_attribute("axes", &[2]), int_attribute("keepdims", 0)],
    )?;
    let h = g.node("Relu", &[&pooled], "encoder/h", vec![])?;

    // One head per task.
    let mut outputs = Vec::new();
    for ((task, spans), dims) in model.config.tasks.iter().zip(&shape.heads).zip(&d.heads) {
        let name = &task.name;
        let w1 = g.floats(
            &format!("heads.{name}.hidden.weight"),
            &[dims.hidden, d.filters],
            &params[spans.hidden_weight.range()],
        )?;
        let c1 = g.floats(
            &format!("heads.{name}.hidden.bias"),
            &[dims.hidden],
            &params[spans.hidden_bias.range()],
        )?;
        let w2 = g.floats(
            &format!("heads.{name}.out.weight"),
            &[dims.classes, dims.hidden],
            &params[spans.out_weight.range()],
        )?;
        let c2 = g.floats(
            &format!("heads.{name}.out.bias"),
            &[dims.classes],
            &params[spans.out_bias.range()],
        )?;
        let transposed_b = || vec![int_attribute("transB", 1)];
        let pre = g.node(
            "Gemm",
            &[&h, &w1, &c1],
            &format!("heads/{name}/hidden_pre"),
            transposed_b(),
        )?;
        let hidden = g.node("Relu", &[&pre], &format!("heads/{name}/hidden"), vec![])?;
        let logits = g.node(
            "Gemm",
            &[&hidden, &w2, &c2],
            &format!("heads/{name}/logits"),
            transposed_b(),
        )?;
        let probabilities = g
            .node("Softmax", &[&logits], name, vec![int_attribute("axis", 1)])
            .map_err(|_| {
                anyhow::anyhow!(
                    "task name {name:?} is also the name of a value inside the ONNX graph; \
                 rename the task"
                )
            })?;
        outputs.push(ValueInfoProto {
            name: Some(probabilities),
            r#type: Some(tensor_type(
                data_type::FLOAT,
                &[Dim::Named("batch"), Dim::Fixed(dims.classes)],
            )),
            doc_string: Some(format!(
                "probabilities of the classes of task {name}, in the order of labels[{name:?}]"
            )),
        });
    }

    Ok(GraphProto {
        node: g.nodes,
        name: Some("polyhead".to_string()),
        initializer: g.initializers,
        doc_string: None,
        input: vec![ValueInfoProto {
            name: Some(INPUT.to_string()),
            r#type: Some(tensor_type(
                data_type::INT64,
                &[Dim::Named("batch"), Dim::Named("length")],
            )),
            doc_string: Some(
                "token ids, one text per row, right-padded with 0; 1 = unknown word".to_string(),
            ),
        }],
        output: outputs,
        value_info: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, TaskConfig};

    fn model(task_names: &[&str]) -> Model {
        let config = ModelConfig {
            embed_dim: 3,
            filters: 2,
            kernel_size: 2,
            max_len: 8,
            lowercase: true,
            tasks: task_names
                .iter()
                .map(|name| TaskConfig {
                    name: name.to_string(),
                    hidden: 2,
                    classes: vec!["a".into(), "b".into()],
                })
                .collect(),
        };
        let vocab = ["<pad>", "<unk>", "w"].map(String::from).to_vec();
        let len = crate::model::Shape::new(config.dims(3)).len;
        let params = (0..len).map(|i| i as f32 * 0.5 - 4.0).collect();
        Model::new(config, vocab, params).unwrap()
    }

    #[test]
    fn every_weight_is_an_initializer_with_its_exact_bits() {
        let model = model(&["topic", "mood"]);
        let bytes = onnx_bytes(&model).unwrap();
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = back.graph.unwrap();
        let names = model.config.task_names();
        for (name, dims, span) in model.shape.named_tensors(&names) {
            let tensor = graph
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("{name} missing"));
            let want_dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
            assert_eq!(tensor.dims, want_dims, "{name}");
            let raw = tensor.raw_data.as_ref().unwrap();
            let values: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(values, model.params[span.range()], "{name}");
        }
    }

    #[test]
    fn dynamic_input_one_output_per_task_and_no_frozen_pooling() {
        let model = model(&["topic", "mood"]);
        let back = ModelProto::decode(onnx_bytes(&model).unwrap().as_slice()).unwrap();
        assert_eq!(back.ir_version, Some(IR_VERSION));
        assert_eq!(back.opset_import[0].version, Some(OPSET));
        let graph = back.graph.unwrap();

        let dims_of = |info: &ValueInfoProto| -> Vec<String> {
            let Some(type_proto::Value::TensorType(t)) = info.r#type.clone().unwrap().value else {
                panic!("not a tensor type")
            };
            t.shape
                .unwrap()
                .dim
                .into_iter()
                .map(|d| match d.value.unwrap() {
                    tensor_shape_proto::dimension::Value::DimParam(p) => p,
                    tensor_shape_proto::dimension::Value::DimValue(v) => v.to_string(),
                })
                .collect()
        };
        assert_eq!(graph.input.len(), 1);
        assert_eq!(dims_of(&graph.input[0]), ["batch", "length"]);
        let outputs: Vec<&str> = graph
            .output
            .iter()
            .map(|o| o.name.as_deref().unwrap())
            .collect();
        assert_eq!(outputs, ["topic", "mood"]);
        assert_eq!(dims_of(&graph.output[1]), ["batch", "2"]);

        let ops: Vec<&str> = graph
            .node
            .iter()
            .map(|n| n.op_type.as_deref().unwrap())
            .collect();
        assert!(ops.contains(&"ReduceMax") && ops.contains(&"Where"));
        assert!(!ops.iter().any(|op| op.contains("Pool")), "{ops:?}");
        assert_eq!(ops.iter().filter(|&&op| op == "Softmax").count(), 2);
    }

    #[test]
    fn metadata_carries_config_vocab_and_labels() {
        let model = model(&["topic"]);
        let back = ModelProto::decode(onnx_bytes(&model).unwrap().as_slice()).unwrap();
        let get = |key: &str| {
            back.metadata_props
                .iter()
                .find(|e| e.key.as_deref() == Some(key))
                .and_then(|e| e.value.clone())
                .unwrap_or_else(|| panic!("no {key}"))
        };
        let stored = model.metadata().unwrap();
        for key in ["format", "format_version", "config", "vocab", "labels"] {
            assert_eq!(get(key), stored[key], "{key}");
        }
        let tokenizer: serde_json::Value = serde_json::from_str(&get("tokenizer")).unwrap();
        assert_eq!(tokenizer["version"], 1);
    }

    #[test]
    fn task_named_like_the_input_or_an_inner_value_is_refused() {
        for name in [INPUT, "encoder/h"] {
            let err = onnx_bytes(&model(&[name])).unwrap_err().to_string();
            assert!(err.contains(&format!("task name {name:?}")), "{err}");
        }
    }
}
