//! The model loader against damaged and foreign files (the safetensors
//! cases in tests/fixtures/cases/case-14-*): each is refused with an error
//! that names the file and the reason, without a panic.

use std::path::PathBuf;

use polyhead::model::Model;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cases/case-14-safetensors-corrupt-or-mismatched")
        .join(name)
}

fn load_error(name: &str) -> String {
    let path = fixture(name);
    let err = Model::load(&path).expect_err("a damaged file must be refused");
    let text = format!("{err:#}");
    assert!(text.contains(name), "the error must name the file: {text}");
    text
}

#[test]
fn valid_safetensors_without_polyhead_metadata_is_not_a_model() {
    let text = load_error("good.safetensors");
    assert!(
        text.contains("metadata \"format\" is \"pt\", not \"polyhead\""),
        "{text}"
    );
}

#[test]
fn truncated_file() {
    let text = load_error("truncated.safetensors");
    assert!(text.contains("invalid safetensors file"), "{text}");
}

#[test]
fn tensor_shape_larger_than_its_bytes() {
    let text = load_error("shape_mismatch.safetensors");
    assert!(text.contains("invalid safetensors file"), "{text}");
}

#[test]
fn header_length_of_a_terabyte_fails_before_allocating() {
    let text = load_error("header_length_huge.safetensors");
    assert!(text.contains("invalid safetensors file"), "{text}");
    assert!(text.to_lowercase().contains("header"), "{text}");
}

#[test]
fn overlapping_tensor_offsets() {
    let text = load_error("overlapping_offsets.safetensors");
    assert!(text.contains("invalid safetensors file"), "{text}");
}

#[test]
fn not_a_safetensors_file_at_all() {
    let text = load_error("not_safetensors.bin");
    assert!(text.contains("invalid safetensors file"), "{text}");
}

#[test]
fn missing_file_names_the_path() {
    let err = Model::load(&fixture("absent.safetensors")).unwrap_err();
    assert!(format!("{err:#}").contains("absent.safetensors"));
}
