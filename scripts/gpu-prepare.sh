#!/usr/bin/env bash
# Prepares the one GPU check (scripts/gpu-check.sh) on a machine WITHOUT a
# GPU: the lent GPU machine has no Rust toolchain and no network, so this
# builds everything it runs and copies it into .device/ (ignored by git;
# name `.device` in the device run's carry):
#
#   .device/bin/polyhead            release binary, kernels embedded as PTX
#   .device/tests/cuda_backend      GPU parity tests (cargo test --release --no-run)
#   .device/peer/torch_mtcnn.py     the PyTorch peer
#   .device/data/bench-mix/*.tsv    the end-to-end training set
#   .device/cpu-metrics.jsonl       optional: CPU run's metrics (CPU_METRICS=FILE)
#   .device/manifest.txt            commit, kernel build, sizes
#
# The kernels are compiled to PTX here with NVRTC from NVIDIA's PyPI wheels
# (pip install nvidia-cuda-nvrtc-cu12), so the GPU machine needs no NVRTC.
# Environment: PYTHON (the Python with the wheels), SHARED (default
# ../shared: peer/ and data/), POLYHEAD_CUDA_ARCH (default
# compute_80,compute_90), CPU_METRICS.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
shared=${SHARED:-$repo/../shared}
dev="$repo/.device"

nvidia_dir=$("$python" -c '
import importlib.util, os
spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
if spec:
    print(os.path.dirname(list(spec.submodule_search_locations)[0]))' 2>/dev/null || true)
if [[ -z "$nvidia_dir" ]]; then
    echo "gpu-prepare: NVRTC wheel not installed for $python" \
        "(pip install nvidia-cuda-nvrtc-cu12)" >&2
    exit 2
fi
export LD_LIBRARY_PATH="$nvidia_dir/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export POLYHEAD_CUDA_ARCH=${POLYHEAD_CUDA_ARCH:-compute_80,compute_90}
for need in "$shared/peer/torch_mtcnn.py" "$shared/data/bench-mix/train.tsv"; do
    [[ -f "$need" ]] || { echo "gpu-prepare: missing $need (set SHARED)" >&2; exit 2; }
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "gpu-prepare: building (release) with PTX for $POLYHEAD_CUDA_ARCH"
cargo build --release --bin polyhead
cargo test --release --no-run --test cuda_backend --message-format=json >"$log"
tests_exe=$("$python" -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    built = m.get("reason") == "compiler-artifact" and m.get("executable")
    if built and m.get("target", {}).get("name") == "cuda_backend":
        print(m["executable"])' "$log" | tail -n1)
[[ -x "$tests_exe" ]] || { echo "gpu-prepare: no cuda_backend test executable" >&2; exit 1; }

# build.rs records how the kernels were built (KERNEL_BUILD) next to the PTX.
pattern="ptx for compute_[0-9a-z_,]* by [a-z]* [0-9.]* at build time"
build=$(grep -ao "$pattern" "$tests_exe" | head -n1 || true)
if [[ -z "$build" ]] || ! grep -q "visible .entry encoder_forward_bf16" "$tests_exe"; then
    echo "gpu-prepare: the kernels were not compiled to PTX (is libnvrtc loadable?)" >&2
    exit 1
fi
if ! grep -q "visible .entry encoder_forward_bf16" target/release/polyhead; then
    echo "gpu-prepare: warning: the polyhead binary carries no CUDA kernels (its commands" \
        "do not reach the CUDA backend yet); bench and train on the GPU will fail" >&2
fi

rm -rf "$dev"
mkdir -p "$dev/bin" "$dev/tests" "$dev/peer" "$dev/data/bench-mix"
cp target/release/polyhead "$dev/bin/"
cp "$tests_exe" "$dev/tests/cuda_backend"
# Debug info would take the two executables past what may travel; the PTX
# lives in their data, which stripping leaves alone.
if command -v strip >/dev/null; then
    strip --strip-debug "$dev/bin/polyhead" "$dev/tests/cuda_backend"
fi
cp "$shared/peer/torch_mtcnn.py" "$dev/peer/"
cp "$shared"/data/bench-mix/{train,valid,test}.tsv "$dev/data/bench-mix/"
if [[ -n "${CPU_METRICS:-}" ]]; then
    cp "$CPU_METRICS" "$dev/cpu-metrics.jsonl"
fi

size_kb=$(du -sk "$dev" | cut -f1)
{
    echo "commit $(git rev-parse HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
    echo "kernels $build"
    echo "prepared $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version 2>&1 | head -n1)"
    echo "size ${size_kb} KiB"
} >"$dev/manifest.txt"
cat "$dev/manifest.txt"
if ((size_kb > 60 * 1024)); then
    echo "gpu-prepare: .device is ${size_kb} KiB, over the 60 MiB that may travel" >&2
    exit 1
fi
grep -qx "/.device" .gitignore || grep -qx ".device/" .git/info/exclude 2>/dev/null ||
    echo "gpu-prepare: note: .device is not ignored by git here" >&2
echo "gpu-prepare: ok; run scripts/gpu-check.sh on the GPU machine with carry [\".device\"]"
