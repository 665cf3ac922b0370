//! Runs that survive: a training process killed with SIGKILL at random
//! moments never leaves a torn model or state file, and resuming from what
//! it left reaches the same final weights, to the bit, as a run that was
//! never interrupted.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{case, polyhead, scratch};
use polyhead::checkpoint::{state_path, Checkpoint};
use polyhead::model::Model;
use polyhead::rng::Rng;

const KILLS: usize = 20;

fn options(data: &str, out: &str, optimizer: &str) -> Vec<String> {
    [
        "train",
        "--optimizer",
        optimizer,
        "--data",
        data,
        "--batch-size",
        "4",
        "--epochs",
        "10",
        "--checkpoint-every",
        "1",
        "--dropout",
        "0.1",
        "--weighting",
        "uncertainty",
        "--quiet",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn bits(model: &Model) -> Vec<u32> {
    model.params.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn sigkill_at_random_moments_then_resume_gives_identical_weights() {
    kill_and_resume("adam", KILLS);
}

/// LazyAdam marks the rows each step uses by the step's number, so a
/// resumed run needs no marks from before the kill.
#[test]
fn lazy_adam_runs_resume_to_identical_weights() {
    kill_and_resume("lazy-adam", 6);
}

fn kill_and_resume(optimizer: &str, kills: usize) {
    let dir = scratch(&format!("kill-{optimizer}"));
    let data = case("case-16").join("train.tsv");
    let data = data.to_str().unwrap();

    let started = Instant::now();
    let reference_args = options(data, "reference.safetensors", optimizer);
    let refs: Vec<&str> = reference_args.iter().map(String::as_str).collect();
    polyhead(&dir, &refs).ok();
    let full_run = started.elapsed();
    let reference = Model::load(&dir.join("reference.safetensors")).unwrap();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    println!("kill moments drawn with seed {seed}; an uninterrupted run takes {full_run:?}");
    let mut rng = Rng::new(seed as u64);
    let (mut killed_mid_run, mut resumed) = (0, 0);

    for attempt in 0..kills {
        let model = dir.join(format!("run{attempt}.safetensors"));
        let args = options(
            data,
            model.file_name().unwrap().to_str().unwrap(),
            optimizer,
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_polyhead"))
            .env("POLYHEAD_CACHE_DIR", common::token_cache())
            .args(&args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = rng.uniform(0.05, full_run.as_secs_f64().max(0.1));
        std::thread::sleep(Duration::from_secs_f64(delay));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        child.kill().ok();
        child.wait().unwrap();

        // Whatever is on disk is a complete old or new version.
        let state = state_path(&model);
        if model.exists() {
            Model::load(&model).unwrap_or_else(|e| panic!("attempt {attempt}: torn model: {e:#}"));
        }
        if state.exists() {
            Checkpoint::load(&state)
                .unwrap_or_else(|e| panic!("attempt {attempt}: torn state: {e:#}"));
        }

        let mut args = args.clone();
        if state.exists() {
            args.extend(["--resume".to_string(), model.to_str().unwrap().to_string()]);
            resumed += 1;
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        polyhead(&dir, &refs).ok();
        let finished = Model::load(&model).unwrap();
        assert!(
            bits(&finished) == bits(&reference),
            "attempt {attempt} (killed after {delay:.3} s): weights differ"
        );
    }
    println!(
        "{optimizer}: {kills} kills, {killed_mid_run} while training ran, {resumed} resumed \
         from a checkpoint"
    );
    assert!(
        killed_mid_run >= kills / 2,
        "too few kills landed mid-run: {killed_mid_run}"
    );
    // Dozens of models and states: kept only when the test fails.
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resuming_with_other_options_or_data_is_refused() {
    let dir = scratch("resume-mismatch");
    let data = case("case-16").join("train.tsv");
    let data = data.to_str().unwrap();
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "2",
            "--quiet",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();

    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--resume",
            "m.safetensors",
        ],
    )
    .fails(2);
    assert!(
        run.stderr.contains("--batch-size is \"8\" here but \"64\""),
        "{}",
        run.stderr
    );

    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "2",
            "--optimizer",
            "lazy-adam",
            "--resume",
            "m.safetensors",
        ],
    )
    .fails(2);
    assert!(
        run.stderr
            .contains("--optimizer is \"lazy-adam\" here but \"adam\""),
        "{}",
        run.stderr
    );

    let other = case("case-01").join("train.tsv");
    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            other.to_str().unwrap(),
            "--epochs",
            "2",
            "--resume",
            "m.safetensors",
        ],
    )
    .fails(2);
    assert!(
        run.stderr.contains("training data (--train/--data"),
        "{}",
        run.stderr
    );

    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "2",
            "--resume",
            "absent.safetensors",
        ],
    )
    .fails(1);
    assert!(
        run.stderr.contains("absent.state.safetensors"),
        "{}",
        run.stderr
    );

    let run = polyhead(
        &dir,
        &[
            "train",
            "--data",
            data,
            "--epochs",
            "2",
            "--resume",
            "m.safetensors",
        ],
    )
    .ok();
    assert!(run.stderr.contains("already complete"), "{}", run.stderr);
}

/// A temporary file left by a killed write is cleaned on the next start.
#[test]
fn leftover_temporaries_are_removed() {
    let dir = scratch("leftover");
    let data = case("case-16").join("train.tsv");
    std::fs::write(dir.join(".m.safetensors.tmp-4242"), b"half a model").unwrap();
    std::fs::write(dir.join(".m.state.safetensors.tmp-4242"), b"half a state").unwrap();
    polyhead(
        &dir,
        &[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    Model::load(&dir.join("m.safetensors")).unwrap();
}

/// `--monitor` keeps the best epoch's model in `--out`; with a patience the
/// run stops once the metric has not improved for that many epochs.
#[test]
fn early_stopping_keeps_the_best_model() {
    // The default data overfits within a few epochs: its validation loss
    // rises from about the third epoch on.
    let dir = scratch("early-stop");
    let run = polyhead(
        &dir,
        &[
            "train",
            "--epochs",
            "10",
            "--monitor",
            "valid_loss",
            "--early-stop-patience",
            "2",
            "--metrics-out",
            "metrics.jsonl",
            "--out",
            "m.safetensors",
        ],
    )
    .ok();
    let epochs = common::json_lines(&std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap());
    let losses: Vec<f64> = epochs
        .iter()
        .map(|e| e["valid_loss"].as_f64().unwrap())
        .collect();
    let best = (0..losses.len())
        .min_by(|&a, &b| losses[a].total_cmp(&losses[b]))
        .unwrap();
    assert!(losses.len() < 10, "no early stop: {losses:?}");
    assert_eq!(
        losses.len(),
        best + 1 + 2,
        "stopped {} epochs after the best",
        losses.len() - best - 1
    );
    assert!(
        run.stderr
            .contains(&format!("best model (epoch {}) written", best + 1)),
        "{}",
        run.stderr
    );

    // The file holds the best epoch's weights, not the last epoch's: the
    // run state beside it holds the last.
    let best_model = polyhead::model::Model::load(&dir.join("m.safetensors")).unwrap();
    let last = polyhead::checkpoint::Checkpoint::load(&dir.join("m.state.safetensors")).unwrap();
    assert_ne!(best_model.params, last.params);
}

fn folder_options(data: &str, folder: &str) -> Vec<String> {
    [
        "train",
        "--data",
        data,
        "--batch-size",
        "4",
        "--epochs",
        "50",
        "--checkpoint-every",
        "1",
        "--ckpt-dir",
        folder,
        "--keep-last",
        "2",
        "--quiet",
        "--out",
        &format!("{folder}.safetensors"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn checkpoint_files(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.starts_with("ckpt-")
    });
    files.sort();
    files
}

/// The checkpoint-folder scenario: 20 kills 0.05 to 2 s into a 50-epoch
/// run that checkpoints every step into a folder keeping the newest two.
/// Every checkpoint file present after a kill loads; `--resume FOLDER`
/// always starts, and finishes with the uninterrupted run's weights.
#[test]
fn sigkill_with_a_checkpoint_folder_then_resume_from_the_folder() {
    let dir = scratch("kill-folder");
    let data = case("case-16").join("train.tsv");
    let data = data.to_str().unwrap();
    let reference_args = folder_options(data, "reference");
    let refs: Vec<&str> = reference_args.iter().map(String::as_str).collect();
    polyhead(&dir, &refs).ok();
    let reference = Model::load(&dir.join("reference.safetensors")).unwrap();
    assert_eq!(
        checkpoint_files(&dir.join("reference")).len(),
        2,
        "--keep-last 2"
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    println!("kill moments drawn with seed {seed}");
    let mut rng = Rng::new(seed as u64);
    let (mut killed_mid_run, mut resumed) = (0, 0);
    for attempt in 0..KILLS {
        let folder = format!("ck{attempt}");
        let args = folder_options(data, &folder);
        let mut child = Command::new(env!("CARGO_BIN_EXE_polyhead"))
            .env("POLYHEAD_CACHE_DIR", common::token_cache())
            .args(&args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = rng.uniform(0.05, 2.0);
        std::thread::sleep(Duration::from_secs_f64(delay));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        child.kill().ok();
        child.wait().unwrap();

        let files = checkpoint_files(&dir.join(&folder));
        assert!(
            files.len() <= 3,
            "attempt {attempt}: {} checkpoints kept",
            files.len()
        );
        for file in &files {
            Checkpoint::load(file)
                .unwrap_or_else(|e| panic!("attempt {attempt}: torn checkpoint: {e:#}"));
        }

        let mut args = args.clone();
        if !files.is_empty() {
            args.extend(["--resume".to_string(), format!("{folder}/")]);
            resumed += 1;
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        polyhead(&dir, &refs).ok();
        let finished = Model::load(&dir.join(format!("{folder}.safetensors"))).unwrap();
        assert!(
            bits(&finished) == bits(&reference),
            "attempt {attempt} (killed after {delay:.3} s): weights differ"
        );
    }
    println!("{KILLS} kills, {killed_mid_run} while training ran, {resumed} resumed");
    assert!(
        killed_mid_run >= KILLS / 2,
        "too few kills landed mid-run: {killed_mid_run}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A damaged newest checkpoint is skipped with a warning naming it, and the
/// run resumes from the one before; with none valid, a one-line error.
#[test]
fn resume_skips_damaged_checkpoints_and_fails_clearly_without_any() {
    let dir = scratch("damaged-folder");
    let data = case("case-16").join("train.tsv");
    let data = data.to_str().unwrap();
    let mut args = folder_options(data, "ck");
    args[6] = "3".to_string(); // --epochs
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    polyhead(&dir, &refs).ok();
    let reference = Model::load(&dir.join("ck.safetensors")).unwrap();

    let files = checkpoint_files(&dir.join("ck"));
    assert_eq!(files.len(), 2);
    let newest = files.last().unwrap();
    // One flipped bit in the tensors: only the checksum can tell.
    let mut bytes = std::fs::read(newest).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x01;
    std::fs::write(newest, &bytes).unwrap();
    std::fs::remove_file(dir.join("ck.safetensors")).unwrap();

    let mut resume = args.clone();
    resume.extend(["--resume".to_string(), "ck/".to_string()]);
    let refs: Vec<&str> = resume.iter().map(String::as_str).collect();
    let run = polyhead(&dir, &refs).ok();
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        run.stderr.contains("skipping a checkpoint") && run.stderr.contains(&name),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("checksum"), "{}", run.stderr);
    let finished = Model::load(&dir.join("ck.safetensors")).unwrap();
    assert!(
        bits(&finished) == bits(&reference),
        "resumed from the older checkpoint"
    );

    for file in checkpoint_files(&dir.join("ck")) {
        std::fs::write(&file, b"not a checkpoint").unwrap();
    }
    let run = polyhead(&dir, &refs);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let last = run
        .stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("none of its 2 checkpoints is valid"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}
