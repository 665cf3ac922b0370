//! The exported models in other runtimes: onnxruntime and PyTorch, run by
//! tests/python/export_check.py on token batches of varied lengths (alone
//! and right-padded together), must give polyhead's probabilities within
//! 1e-5; the exported Python tokenizer must give polyhead's tokens; the
//! exported safetensors reader must refuse damaged files.

mod common;

use std::path::{Path, PathBuf};

use polyhead::backend::cpu::CpuBackend;
use polyhead::data::table::read_table;
use polyhead::data::tokenizer::Tokenizer;
use polyhead::data::vocab::column_index;
use polyhead::export::run_export;
use polyhead::model::init::initial_params;
use polyhead::model::network::{HostBatch, Network};
use polyhead::model::{Model, ModelConfig, TaskConfig};
use polyhead::rng::Rng;
use polyhead::train::softmax;
use serde_json::{json, Value};

use common::{python, scratch};

const MODULES: &[&str] = &["numpy", "onnx", "onnxruntime", "torch"];

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The validation texts of the embedded data set.
fn validation_texts() -> Vec<String> {
    let table = read_table(&manifest("data/clothing-reviews/valid.tsv"), None).unwrap();
    let column = column_index(&table, "text").unwrap();
    table
        .rows
        .iter()
        .filter_map(|r| r.cell(column).map(str::to_string))
        .collect()
}

/// A model with random weights whose vocabulary is the validation texts'
/// words, three tasks of different sizes.
fn random_model(seed: u64) -> Model {
    let tokenizer = Tokenizer::default();
    let mut vocab = vec!["<pad>".to_string(), "<unk>".to_string()];
    for text in validation_texts() {
        for token in tokenizer.tokens(&text) {
            if vocab.len() < 1500 && !vocab.contains(&token) {
                vocab.push(token);
            }
        }
    }
    let task = |name: &str, hidden, classes: usize| TaskConfig {
        name: name.to_string(),
        hidden,
        classes: (0..classes).map(|c| format!("{name}-{c}")).collect(),
    };
    let config = ModelConfig {
        embed_dim: 32,
        filters: 24,
        kernel_size: 5,
        max_len: 128,
        lowercase: true,
        tasks: vec![
            task("topic", 16, 10),
            task("sentiment", 8, 2),
            task("emotion", 12, 6),
        ],
    };
    let shape = polyhead::model::Shape::new(config.dims(vocab.len()));
    // Doubled so that the heads are far from uniform and differences show.
    let params: Vec<f32> = initial_params(&shape, &mut Rng::new(seed))
        .into_iter()
        .map(|v| 2.0 * v)
        .collect();
    Model::new(config, vocab, params).unwrap()
}

/// polyhead's own probabilities for each text, run alone.
fn polyhead_probabilities(model: &Model, texts: &[Vec<i32>]) -> Vec<Value> {
    let shape = model.shape.clone();
    let widest = texts.iter().map(Vec::len).max().unwrap_or(0);
    let mut net = Network::new(CpuBackend::new(), shape.clone(), &model.params, 1, widest).unwrap();
    let mut batch = HostBatch::default();
    texts
        .iter()
        .map(|ids| {
            batch.fill(std::iter::once(ids.as_slice()), shape.dims.kernel);
            let logits = net.logits(&batch).unwrap().to_vec();
            let per_task: serde_json::Map<String, Value> = model
                .config
                .tasks
                .iter()
                .enumerate()
                .map(|(i, task)| {
                    let offset = shape.class_offset(i);
                    let probs = softmax(&logits[offset..offset + task.classes.len()]);
                    (task.name.clone(), json!(probs))
                })
                .collect();
            Value::Object(per_task)
        })
        .collect()
}

fn labels(model: &Model) -> Value {
    let map: serde_json::Map<String, Value> = model
        .config
        .tasks
        .iter()
        .map(|t| (t.name.clone(), json!(t.classes)))
        .collect();
    Value::Object(map)
}

/// Runs export_check.py on `plan`; returns its report.
fn run_check(python: &Path, dir: &Path, plan: &Value) -> String {
    std::fs::write(dir.join("plan.json"), serde_json::to_vec(plan).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(manifest("tests/python/export_check.py"))
        .arg("plan.json")
        .current_dir(dir)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "export check failed:\n{report}");
    report
}

/// Exports `model` (saved in `dir`) as ONNX and PyTorch.
fn export_both(model: &Model, dir: &Path) -> (PathBuf, PathBuf) {
    let model_path = dir.join("m.safetensors");
    model.save(&model_path).unwrap();
    run_export(&model_path, "onnx", &dir.join("m.onnx")).unwrap();
    run_export(&model_path, "torch", &dir.join("m_torch.py")).unwrap();
    (dir.join("m.onnx"), dir.join("m_torch.py"))
}

fn tensor_names(model: &Model) -> Vec<String> {
    model
        .shape
        .named_tensors(&model.config.task_names())
        .into_iter()
        .map(|(name, _, _)| name)
        .collect()
}

#[test]
fn onnx_and_torch_give_polyheads_probabilities_for_any_length_and_batch() {
    let Some(python) = python("export runtimes", MODULES) else {
        return;
    };
    let dir = scratch("export-runtimes");
    let model = random_model(7);
    let (onnx, torch) = export_both(&model, &dir);

    // Random ids of lengths around the kernel width (5), a long one, an
    // empty text, then real texts of the validation set.
    let mut rng = Rng::new(11);
    let vocab = model.vocab.len() as u64;
    let mut texts: Vec<Vec<i32>> = [1usize, 4, 44, 8, 2, 5, 6, 128, 0, 3, 17, 1]
        .iter()
        .map(|&n| (0..n).map(|_| 1 + rng.below(vocab - 1) as i32).collect())
        .collect();
    let tokenizer = Tokenizer::default();
    let ids: std::collections::HashMap<&str, i32> = model
        .vocab
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, w)| (w.as_str(), i as i32))
        .collect();
    for text in validation_texts().iter().take(40) {
        let mut tokens = tokenizer.tokens(text);
        tokens.truncate(model.config.max_len);
        texts.push(
            tokens
                .iter()
                .map(|t| *ids.get(t.as_str()).unwrap_or(&1))
                .collect(),
        );
    }
    let expected = polyhead_probabilities(&model, &texts);

    // Batches of 4 in order (each mixes lengths), one of everything, and
    // the 1-token text beside the longest.
    let mut batches: Vec<Vec<usize>> = (0..texts.len())
        .collect::<Vec<_>>()
        .chunks(4)
        .map(<[usize]>::to_vec)
        .collect();
    batches.push((0..texts.len()).collect());
    batches.push(vec![0, 7]);

    let plan = json!({
        "onnx": onnx,
        "torch_module": torch,
        "sidecar": dir.join("m.vocab.json"),
        "labels": labels(&model),
        "tensor_names": tensor_names(&model),
        "tolerance": 1e-5,
        "texts": texts,
        "expected": expected,
        "batches": batches,
    });
    let report = run_check(&python, &dir, &plan);
    for runtime in ["onnxruntime", "torch"] {
        let line = report
            .lines()
            .find(|l| l.starts_with(runtime))
            .unwrap_or_else(|| panic!("no {runtime} line in:\n{report}"));
        assert!(
            line.contains("52 texts alone and in 15 padded batches"),
            "{line}"
        );
    }
}

/// A model trained on the embedded set (two epochs), exported, and run by
/// onnxruntime and PyTorch on every text of the default validation set,
/// alone and in padded batches of 64.
#[test]
fn a_trained_model_exports_faithfully_on_the_whole_validation_set() {
    let Some(python) = python("export of a trained model", MODULES) else {
        return;
    };
    let dir = scratch("export-trained");
    common::polyhead(
        &dir,
        &[
            "train",
            "--epochs",
            "2",
            "--quiet",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let model = Model::load(&dir.join("m.safetensors")).unwrap();
    run_export(&dir.join("m.safetensors"), "onnx", &dir.join("m.onnx")).unwrap();
    run_export(&dir.join("m.safetensors"), "torch", &dir.join("m_torch.py")).unwrap();

    let tokenizer = Tokenizer::default();
    let ids: std::collections::HashMap<&str, i32> = model
        .vocab
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, w)| (w.as_str(), i as i32))
        .collect();
    let texts: Vec<Vec<i32>> = validation_texts()
        .iter()
        .map(|text| {
            let mut tokens = tokenizer.tokens(text);
            tokens.truncate(model.config.max_len);
            tokens
                .iter()
                .map(|t| *ids.get(t.as_str()).unwrap_or(&1))
                .collect()
        })
        .collect();
    let expected = polyhead_probabilities(&model, &texts);
    let batches: Vec<Vec<usize>> = (0..texts.len())
        .collect::<Vec<_>>()
        .chunks(64)
        .map(<[usize]>::to_vec)
        .collect();

    let plan = json!({
        "onnx": dir.join("m.onnx"),
        "torch_module": dir.join("m_torch.py"),
        "sidecar": dir.join("m.vocab.json"),
        "labels": labels(&model),
        "tensor_names": tensor_names(&model),
        "tolerance": 1e-5,
        "texts": texts,
        "expected": expected,
        "batches": batches,
    });
    let report = run_check(&python, &dir, &plan);
    let want = format!(
        "{} texts alone and in {} padded batches",
        texts.len(),
        batches.len()
    );
    for runtime in ["onnxruntime", "torch"] {
        let line = report
            .lines()
            .find(|l| l.starts_with(runtime))
            .unwrap_or_else(|| panic!("no {runtime} line in:\n{report}"));
        assert!(line.contains(&want), "{line}");
    }
    assert!(
        texts.len() > 800,
        "the validation set has {} texts",
        texts.len()
    );
}

/// Characters of every class of the tokenizer rule, and its edge cases.
const POOL: &[&str] = &[
    "a", "b", "Z", "q", "x", "0", "7", "9", " ", " ", "'", "’", ".", ",", "!", "?", "-", "_", "\t",
    "\n", "\r", "é", "É", "ß", "İ", "Σ", "σ", "Ω", "ı", "ﬁ", "Å", "K", "\u{0301}", "\u{0308}",
    "\u{200B}", "\u{200D}", "\u{00AD}", "\u{FEFF}", "\u{2060}", "\u{00A0}", "\u{2028}", "\u{2029}",
    "\u{3000}", "\u{0085}", "我", "爱", "北", "京", "〇", "々", "ー", "カ", "한", "ᄀ", "𠀀", "ภ",
    "ລ", "က", "ក", "٣", "३", "５", "Ⅷ", "²", "☕", "👍", "🏽", "€", "$", "%", "«", "—", "‿", "＿",
    "Ａ", "ｶ", "ع", "ש", "क", "्", "٫", "·",
];

/// Random texts from [`POOL`] and from arbitrary code points.
fn tokenizer_texts(count: usize) -> Vec<String> {
    let mut rng = Rng::new(3);
    (0..count)
        .map(|_| {
            let len = 1 + rng.below(12) as usize;
            (0..len)
                .map(|_| {
                    if rng.next_f64() < 0.85 {
                        POOL[rng.below(POOL.len() as u64) as usize].to_string()
                    } else {
                        let code = rng.below(0x30000) as u32;
                        char::from_u32(code).map_or("x".to_string(), String::from)
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn exported_tokenizer_and_reader_agree_with_polyhead() {
    let Some(python) = python("export tokenizer", MODULES) else {
        return;
    };
    let dir = scratch("export-tokenizer");
    let model = random_model(5);
    let (_, torch) = export_both(&model, &dir);
    let tokenizer = Tokenizer::default();

    // The rule's own examples, as specified.
    let examples: &[(&str, &[&str])] = &[
        ("Don't panic!!", &["don't", "panic", "!", "!"]),
        (
            "3.5 stars, 1,000 times",
            &["3.5", "stars", ",", "1,000", "times"],
        ),
        ("我爱北京", &["我", "爱", "北", "京"]),
        ("東京タワー", &["東", "京", "タ", "ワ", "ー"]),
        ("한국어 텍스트", &["한", "국", "어", "텍", "스", "트"]),
        ("café ☕", &["café", "☕"]),
        ("snake_case", &["snake_case"]),
    ];
    for (text, tokens) in examples {
        assert_eq!(tokenizer.tokens(text), *tokens, "{text}");
    }

    let vocab: std::collections::HashMap<&str, i32> = model
        .vocab
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, w)| (w.as_str(), i as i32))
        .collect();
    let texts: Vec<String> = examples
        .iter()
        .map(|(t, _)| t.to_string())
        .chain(validation_texts())
        .chain(tokenizer_texts(3000))
        .collect();
    let cases: Vec<Value> = texts
        .iter()
        .map(|text| {
            let tokens = tokenizer.tokens(text);
            let ids: Vec<i32> = tokens
                .iter()
                .take(model.config.max_len)
                .map(|t| *vocab.get(t.as_str()).unwrap_or(&1))
                .collect();
            json!({"text": text, "tokens": tokens, "ids": ids})
        })
        .collect();

    let damaged = manifest("tests/fixtures/cases/case-14-safetensors-corrupt-or-mismatched");
    let bad: Vec<PathBuf> = [
        "truncated.safetensors",
        "shape_mismatch.safetensors",
        "header_length_huge.safetensors",
        "overlapping_offsets.safetensors",
        "not_safetensors.bin",
    ]
    .iter()
    .map(|name| damaged.join(name))
    .collect();

    let plan = json!({
        "torch_module": torch,
        "labels": labels(&model),
        "tensor_names": tensor_names(&model),
        "tolerance": 1e-5,
        "texts": [[5, 6, 7]],
        "expected": polyhead_probabilities(&model, &[vec![5, 6, 7]]),
        "tokenizer_cases": cases,
        "safetensors_cases": {
            "good": {
                "path": damaged.join("good.safetensors"),
                "tensor": "w",
                "values": [0.5, -1.0, 2.0, 0.0, 1.5, -0.25],
            },
            "bad": bad,
        },
    });
    let report = run_check(&python, &dir, &plan);
    assert!(report.contains("0 differ"), "{report}");
    assert!(
        report.contains("good file read, 5 of 5 damaged refused"),
        "{report}"
    );
}
