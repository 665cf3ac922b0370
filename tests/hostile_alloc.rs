//! The model and run-state loaders never allocate in proportion to a size
//! a hostile file claims: measured with a counting global allocator around
//! `Model::from_bytes` and `Checkpoint::from_bytes` on crafted files.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

use polyhead::checkpoint::Checkpoint;
use polyhead::model::{Model, ModelConfig, Shape, TaskConfig};
use safetensors::tensor::{Dtype, TensorView};

/// Counts each thread's live heap bytes and their peak, so that tests
/// running side by side do not see each other's allocations.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: the allocator also runs while a thread's locals are torn down.
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and the peak of heap bytes it added on
/// this thread.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - base).max(0) as usize)
}

fn config(embed: usize) -> ModelConfig {
    ModelConfig {
        embed_dim: embed,
        filters: 3,
        kernel_size: 2,
        max_len: 16,
        lowercase: true,
        tasks: vec![TaskConfig {
            name: "topic".into(),
            hidden: 2,
            classes: vec!["x".into(), "y".into()],
        }],
    }
}

/// A valid model file's tensors for `config` and a vocabulary of `rows`.
fn model_bytes(config: &ModelConfig, rows: usize, metadata: HashMap<String, String>) -> Vec<u8> {
    let shape = Shape::new(config.dims(rows));
    let params = vec![0.5f32; shape.len];
    let tensors = shape.named_tensors(&config.task_names());
    let bytes: &[u8] = bytemuck::cast_slice(&params);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dims, span)| {
            let data = &bytes[span.offset * 4..(span.offset + span.len) * 4];
            (
                name.clone(),
                TensorView::new(Dtype::F32, dims.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(metadata)).unwrap()
}

fn metadata(config: &ModelConfig, vocab: &[String]) -> HashMap<String, String> {
    HashMap::from([
        ("format".into(), "polyhead".into()),
        ("format_version".into(), "1".into()),
        ("config".into(), serde_json::to_string(config).unwrap()),
        ("vocab".into(), serde_json::to_string(vocab).unwrap()),
    ])
}

fn words(count: usize) -> Vec<String> {
    ["<pad>".to_string(), "<unk>".to_string()]
        .into_iter()
        .chain((2..count).map(|i| format!("w{i}")))
        .collect()
}

#[test]
fn a_header_claiming_a_terabyte_fails_before_allocating() {
    for claim in [1u64 << 40, u64::MAX, 99_999_999] {
        let mut bytes = claim.to_le_bytes().to_vec();
        bytes.extend(b"{}      ");
        let (result, peak) = peak_during(|| Model::from_bytes(&bytes));
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains("header"), "{claim}: {err}");
        assert!(peak < 64 << 10, "{claim}: {peak} bytes allocated");
    }
}

#[test]
fn sizes_claimed_in_the_config_are_not_allocated() {
    // Sizes of 2^16 each imply 2^48 convolution weights (1 PiB); the file
    // holds the tensors of a small model.
    let small = config(4);
    let mut claimed = small.clone();
    claimed.embed_dim = 1 << 16;
    claimed.filters = 1 << 16;
    claimed.kernel_size = 1 << 16;
    claimed.tasks[0].hidden = 1 << 16;
    let bytes = model_bytes(&small, 10, metadata(&claimed, &words(10)));
    let (result, peak) = peak_during(|| Model::from_bytes(&bytes));
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("tensor embedding.weight"), "{err}");
    assert!(
        peak < 64 << 10,
        "{peak} bytes for a {} byte file",
        bytes.len()
    );
}

#[test]
fn a_huge_vocabulary_costs_a_small_multiple_of_the_file() {
    // Two million words in the metadata, ten embedding rows.
    let config = config(4);
    let bytes = model_bytes(&config, 10, metadata(&config, &words(2_000_000)));
    assert!(bytes.len() > 20 << 20);
    let (result, peak) = peak_during(|| Model::from_bytes(&bytes));
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("more words than the 10 rows"), "{err}");
    // The safetensors crate parses the header once into owned strings (an
    // escaped string goes through serde_json's scratch buffer first: about
    // twice the header at the peak); the vocabulary itself stops at the
    // embedding's ten rows. Read whole, a 40 MB file of this kind took
    // 311 MB resident.
    assert!(
        peak < bytes.len() * 5 / 2,
        "{peak} bytes for a {} byte file",
        bytes.len()
    );
}

#[test]
fn a_large_valid_vocabulary_costs_in_proportion_to_the_file() {
    let config = config(8);
    let rows = 200_000;
    let bytes = model_bytes(&config, rows, metadata(&config, &words(rows)));
    let (result, peak) = peak_during(|| Model::from_bytes(&bytes));
    let model = result.unwrap();
    assert_eq!(model.vocab.len(), rows);
    assert!(
        peak < 4 * bytes.len(),
        "{peak} bytes for a {} byte file",
        bytes.len()
    );
}

#[test]
fn a_run_state_with_a_huge_vocabulary_is_refused_early() {
    let config = config(4);
    let shape = Shape::new(config.dims(10));
    let zeros = vec![0.0f32; shape.len];
    let bytes: &[u8] = bytemuck::cast_slice(&zeros);
    let views: Vec<(String, TensorView)> = ["params", "adam.m", "adam.v"]
        .iter()
        .map(|n| {
            let view = TensorView::new(Dtype::F32, vec![shape.len], bytes).unwrap();
            (n.to_string(), view)
        })
        .collect();
    let meta = HashMap::from([
        ("format".to_string(), "polyhead-state".to_string()),
        ("format_version".to_string(), "1".to_string()),
        (
            "config".to_string(),
            serde_json::to_string(&config).unwrap(),
        ),
        (
            "vocab".to_string(),
            serde_json::to_string(&words(2_000_000)).unwrap(),
        ),
    ]);
    let file = safetensors::serialize(views, Some(meta)).unwrap();
    // As for the model file: the header parse, then ten words.
    let (result, peak) = peak_during(|| Checkpoint::from_bytes(&file));
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("more words than the 10 words"), "{err}");
    assert!(peak < file.len() * 5 / 2, "{peak} bytes for {}", file.len());
}
