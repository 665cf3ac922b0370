//! `run_export` end to end on the cases in tests/fixtures/cases: a model
//! trained by the `polyhead` binary, exported, and run in onnxruntime and
//! PyTorch (case 21), and damaged model files refused (case 14).

mod common;

use std::path::{Path, PathBuf};

use polyhead::data::tokenizer::Tokenizer;
use polyhead::export::proto::{type_proto, ModelProto};
use polyhead::export::run_export;
use polyhead::model::init::initial_params;
use polyhead::model::{Model, ModelConfig, Shape, TaskConfig};
use polyhead::rng::Rng;
use prost::Message;
use serde_json::{json, Value};

use common::{case, json_lines, polyhead, python, scratch};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Case 21: the ONNX graph has dynamic batch and length axes and pools
/// over valid windows only, so a 1-token, a 4-token, a 44-token and an
/// 8-token line give polyhead's probabilities alone and padded into one
/// batch of 4, in onnxruntime and in PyTorch; the exported tokenizer gives
/// polyhead's ids for the raw lines.
#[test]
fn case_21_onnx_dynamic_length_maxpool() {
    let Some(python) = python("case 21", &["numpy", "onnx", "onnxruntime", "torch"]) else {
        return;
    };
    let dir = scratch("case21");
    let data = case("case-21");
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            path(&data.join("train.tsv")),
            "--epochs",
            "5",
            "--seed",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    run_export(&dir.join("m.safetensors"), "onnx", &dir.join("m.onnx")).unwrap();
    run_export(&dir.join("m.safetensors"), "torch", &dir.join("m_torch.py")).unwrap();

    let predict = data.join("predict.txt");
    let run = polyhead(
        &dir,
        &[
            "predict",
            "--model",
            "m.safetensors",
            "--probs",
            "--explain-tokens",
            path(&predict),
        ],
    )
    .ok();
    let records = json_lines(&run.stdout);
    let texts: Vec<Value> = records.iter().map(|r| r["ids"].clone()).collect();
    let lengths: Vec<usize> = texts.iter().map(|t| t.as_array().unwrap().len()).collect();
    assert_eq!(lengths, [1, 4, 44, 8]);
    let expected: Vec<Value> = records
        .iter()
        .map(|r| {
            let tasks = r["tasks"].as_object().unwrap();
            let per_task: serde_json::Map<String, Value> = tasks
                .iter()
                .map(|(name, t)| (name.clone(), t["probabilities"].clone()))
                .collect();
            Value::Object(per_task)
        })
        .collect();

    let model = Model::load(&dir.join("m.safetensors")).unwrap();
    let labels: serde_json::Map<String, Value> = model
        .config
        .tasks
        .iter()
        .map(|t| (t.name.clone(), json!(t.classes)))
        .collect();
    let tokenizer = Tokenizer {
        lowercase: model.config.lowercase,
    };
    let lines = std::fs::read_to_string(&predict).unwrap();
    let tokenizer_cases: Vec<Value> = lines
        .lines()
        .zip(&texts)
        .map(|(line, ids)| json!({"text": line, "tokens": tokenizer.tokens(line), "ids": ids}))
        .collect();
    let tensor_names: Vec<String> = model
        .shape
        .named_tensors(&model.config.task_names())
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();

    let plan = json!({
        "onnx": dir.join("m.onnx"),
        "torch_module": dir.join("m_torch.py"),
        "sidecar": dir.join("m.vocab.json"),
        "labels": labels,
        "tensor_names": tensor_names,
        "tolerance": 1e-5,
        "texts": texts,
        "expected": expected,
        "batches": [[0, 1, 2, 3]],
        "tokenizer_cases": tokenizer_cases,
    });
    std::fs::write(dir.join("plan.json"), serde_json::to_vec(&plan).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/export_check.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg("plan.json")
        .current_dir(&dir)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "case 21 failed:\n{report}");
    for runtime in ["onnxruntime", "torch"] {
        assert!(
            report.lines().any(|l| l.starts_with(runtime)
                && l.contains("4 texts alone and in 1 padded batches (up to 4 rows)")),
            "{report}"
        );
    }
    assert!(report.contains("4 texts compared, 0 differ"), "{report}");
}

fn damaged(name: &str) -> PathBuf {
    case("case-14").join(name)
}

/// Case 14: a damaged or foreign file is refused with an error naming it,
/// and nothing is written.
#[test]
fn case_14_damaged_model_files_are_not_exported() {
    let dir = scratch("case14-export");
    for name in [
        "good.safetensors",
        "truncated.safetensors",
        "shape_mismatch.safetensors",
        "header_length_huge.safetensors",
        "overlapping_offsets.safetensors",
        "not_safetensors.bin",
    ] {
        for format in ["onnx", "torch"] {
            let out = dir.join(format!("out.{format}"));
            let err = run_export(&damaged(name), format, &out).expect_err(name);
            let text = format!("{err:#}");
            assert!(text.contains(name), "{format}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
            assert!(!out.exists() && !dir.join("out.vocab.json").exists());
        }
    }
}

fn small_model() -> Model {
    let config = ModelConfig {
        embed_dim: 6,
        filters: 5,
        kernel_size: 3,
        max_len: 20,
        lowercase: false,
        tasks: vec![
            TaskConfig {
                name: "topic".into(),
                hidden: 4,
                classes: vec!["sports".into(), "politics".into(), "tech".into()],
            },
            TaskConfig {
                name: "sentiment".into(),
                hidden: 3,
                classes: vec!["neg".into(), "pos".into()],
            },
        ],
    };
    let vocab: Vec<String> = ["<pad>", "<unk>", "the", "vote", "Goal"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let shape = Shape::new(config.dims(vocab.len()));
    let params = initial_params(&shape, &mut Rng::new(2));
    Model::new(config, vocab, params).unwrap()
}

#[test]
fn export_writes_the_file_and_its_vocabulary_sidecar() {
    let dir = scratch("export-files");
    let model = small_model();
    let model_path = dir.join("m.safetensors");
    model.save(&model_path).unwrap();

    run_export(&model_path, "onnx", &dir.join("m.onnx")).unwrap();
    let bytes = std::fs::read(dir.join("m.onnx")).unwrap();
    let onnx = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = onnx.graph.unwrap();
    let outputs: Vec<&str> = graph
        .output
        .iter()
        .map(|o| o.name.as_deref().unwrap())
        .collect();
    assert_eq!(outputs, ["topic", "sentiment"]);
    let Some(type_proto::Value::TensorType(input)) = graph.input[0].r#type.clone().unwrap().value
    else {
        panic!("input is not a tensor");
    };
    assert_eq!(input.elem_type, Some(7), "int64 tokens");

    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(dir.join("m.vocab.json")).unwrap()).unwrap();
    assert_eq!(sidecar["format"], "polyhead");
    assert_eq!(sidecar["vocab"], json!(model.vocab));
    assert_eq!(
        sidecar["labels"],
        json!({"topic": ["sports", "politics", "tech"], "sentiment": ["neg", "pos"]})
    );
    assert_eq!(sidecar["config"]["kernel_size"], 3);
    assert_eq!(sidecar["tokenizer"]["lowercase"], false);
    assert_eq!(sidecar["tokenizer"]["max_len"], 20);

    std::fs::create_dir_all(dir.join("py")).unwrap();
    run_export(&model_path, "torch", &dir.join("py/model.py")).unwrap();
    let source = std::fs::read_to_string(dir.join("py/model.py")).unwrap();
    let absolute = model_path.canonicalize().unwrap();
    let reference = format!("MODEL_FILE = {}", json!(absolute.to_str().unwrap()));
    assert!(source.contains(&reference), "model file not referenced");
    assert!(source.contains("class PolyheadModel(nn.Module)"));
    assert!(dir.join("py/model.vocab.json").exists());
}

#[test]
fn export_refuses_bad_requests_in_one_line() {
    let dir = scratch("export-refusals");
    let model_path = dir.join("m.safetensors");
    small_model().save(&model_path).unwrap();

    let err = run_export(&model_path, "tflite", &dir.join("m.tflite")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown export format \"tflite\" (expected onnx or torch)"
    );
    let err = run_export(&model_path, "onnx", &dir.join("m.vocab.json")).unwrap_err();
    assert!(
        err.to_string().contains("choose another output name"),
        "{err}"
    );
    let err = run_export(&model_path, "onnx", &model_path).unwrap_err();
    assert!(
        err.to_string().contains("the model file (--model)"),
        "{err}"
    );
    // A model named like a vocabulary file: its export's sidecar is the model.
    let vocab_named = dir.join("v.vocab.json");
    std::fs::copy(&model_path, &vocab_named).unwrap();
    let err = run_export(&vocab_named, "onnx", &dir.join("v.onnx")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "--out {}: the export would write {}, the model file (--model); choose another --out",
            dir.join("v.onnx").display(),
            vocab_named.display()
        )
    );
    assert!(
        err.is::<polyhead::cmd::UsageError>(),
        "not a usage error: {err}"
    );
    std::fs::remove_file(&vocab_named).unwrap();
    let err = run_export(&model_path, "torch", &dir.join("m.onnx")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "--out {}: a .onnx name for the PyTorch (Python source) export; use a .py name",
            dir.join("m.onnx").display()
        )
    );
    assert!(
        err.is::<polyhead::cmd::UsageError>(),
        "not a usage error: {err}"
    );
    let err = run_export(&model_path, "onnx", &dir.join("m.py")).unwrap_err();
    assert!(err.to_string().contains("use a .onnx name"), "{err}");
    let err = run_export(&model_path, "onnx", &dir.join("absent/m.onnx")).unwrap_err();
    assert!(format!("{err:#}").contains("absent/m.onnx"), "{err:#}");
    let err = run_export(&dir.join("nope.safetensors"), "onnx", &dir.join("x.onnx")).unwrap_err();
    assert!(format!("{err:#}").contains("nope.safetensors"), "{err:#}");

    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["m.safetensors"], "a refused export wrote something");

    let mut dotted = small_model();
    dotted.config.tasks[0].name = "topic.v2".into();
    dotted.save(&model_path).unwrap();
    let err = run_export(&model_path, "torch", &dir.join("m.py")).unwrap_err();
    assert!(err.to_string().contains("task name \"topic.v2\""), "{err}");
    run_export(&model_path, "onnx", &dir.join("m.onnx")).unwrap();
}
