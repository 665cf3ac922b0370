#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a few seconds
# from the stored corpus (tests/hostile/, tests/fixtures/cases/); exits
# non-zero if a target fails to build or finds a crash.
#
# Runs on stable Rust: --sanitizer none is the mode cargo-fuzz supports
# without nightly (coverage-guided libFuzzer, no AddressSanitizer; safe
# Rust needs none to catch panics, overflows and failed assertions).
#
#   scripts/fuzz-smoke.sh              each target for FUZZ_SECONDS (8)
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh model_file   one target, longer
#
# New inputs go to a temporary folder, never into the repository; a
# crashing input is kept in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-8}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(table_tsv table_csv table_jsonl tokenizer model_file run_state)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The corpus each target starts from: the stored hostile inputs and every
# input the target once crashed on (tests/hostile/fuzz/<target>/).
seeds() {
    case "$1" in
        table_*|tokenizer) echo tests/hostile/data tests/fixtures/cases ;;
        model_file)
            echo tests/hostile/models \
                tests/fixtures/cases/case-14-safetensors-corrupt-or-mismatched ;;
        run_state) echo tests/hostile/state ;;
        *) echo "fuzz-smoke: unknown target $1" >&2; return 1 ;;
    esac
    if [ -d "tests/hostile/fuzz/$1" ]; then
        echo "tests/hostile/fuzz/$1"
    fi
}

cargo fuzz build --sanitizer none

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    # shellcheck disable=SC2046
    if cargo fuzz run --sanitizer none "$target" "$work/$target" $(seeds "$target") -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
        >"$work/$target.log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$target.log" |
            grep -o '[0-9]*$')
        echo "fuzz-smoke: $target: ${runs:-?} runs, no crash"
    else
        echo "fuzz-smoke: $target: FAILED"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact' "$work/$target.log" | head -20
        status=1
    fi
done
exit $status
