#!/usr/bin/env bash
# Compile every kernels/*.cu with NVRTC for compute_80 and compute_90,
# assemble the PTX with `ptxas -v` (sm_80 and sm_90), print registers,
# shared memory and spills per kernel, and fail on any compile error, any
# register spill or any stack frame. Needs no GPU and no CUDA install:
# NVIDIA's PyPI wheels provide NVRTC, the headers and ptxas.
#
#   pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12
#   scripts/compile-kernels.sh            # uses `python3`, or $PYTHON
#
# The wheels are found through the Python that has them installed (a venv
# or the user site); set PYTHON to choose it. Exit status: 0 clean, 1 a
# kernel failed to compile or spilled, 2 the toolchain was not found.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

# Locate the wheels' folders: nvidia/cuda_nvrtc/lib, nvidia/cuda_runtime/include,
# nvidia/cuda_nvcc/{include,bin/ptxas}.
read -r nvidia_dir < <("$python" - <<'EOF'
import importlib.util, os, sys
for name in ("nvidia.cuda_nvrtc", "nvidia.cuda_nvcc", "nvidia.cuda_runtime"):
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec and spec.submodule_search_locations:
        print(os.path.dirname(list(spec.submodule_search_locations)[0]))
        sys.exit(0)
print("")
EOF
) || true

if [[ -z "${nvidia_dir:-}" ]]; then
    echo "compile-kernels: NVIDIA's CUDA wheels are not installed for $python" >&2
    echo "  pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12" >&2
    exit 2
fi

nvrtc_lib=$(ls "$nvidia_dir"/cuda_nvrtc/lib/libnvrtc.so* 2>/dev/null |
    grep -v -e builtins -e alt | head -n1 || true)
ptxas="$nvidia_dir/cuda_nvcc/bin/ptxas"
runtime_include="$nvidia_dir/cuda_runtime/include"
nvcc_include="$nvidia_dir/cuda_nvcc/include"
for need in "$nvrtc_lib" "$ptxas" "$runtime_include" "$nvcc_include"; do
    if [[ -z "$need" || ! -e "$need" ]]; then
        echo "compile-kernels: missing ${need:-libnvrtc.so} under $nvidia_dir" >&2
        exit 2
    fi
done
export LD_LIBRARY_PATH="$nvidia_dir/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
sources=("$repo"/kernels/*.cu)
echo "kernels: ${#sources[@]} files; nvrtc $nvrtc_lib; ptxas $("$ptxas" --version | tail -n1)"

status=0
for arch in 80 90; do
    if ! "$python" "$repo/scripts/nvrtc_compile.py" --lib "$nvrtc_lib" \
        --arch "compute_$arch" -I "$repo/kernels" -I "$runtime_include" -I "$nvcc_include" \
        --out "$out" "${sources[@]}"; then
        status=1
        continue
    fi
    for src in "${sources[@]}"; do
        stem=$(basename "$src" .cu)
        ptx="$out/$stem.compute_$arch.ptx"
        [[ -f "$ptx" ]] || continue
        if ! report=$("$ptxas" -arch="sm_$arch" -v "$ptx" -o /dev/null 2>&1); then
            echo "error: ptxas rejected $stem for sm_$arch:"
            echo "$report"
            status=1
            continue
        fi
        # One line per kernel: name, registers, shared memory, stack, spills.
        if ! awk -v arch="sm_$arch" -v file="$stem" '
            /Compiling entry function/ {
                name = $0; sub(/.*function .?/, "", name); sub(/.? for .*/, "", name)
            }
            /bytes stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
            /Used [0-9]+ registers/ {
                regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
                smem = 0
                if (match($0, /[0-9]+ bytes smem/)) {
                    smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem)
                }
                # Spills, and stack frames (arrays indexed at run time), both
                # put registers in local memory.
                spills = spill_st + spill_ld + stack > 0
                printf "%-6s %-17s %-29s %3d regs %6d B smem %3d B stack %d/%d B spilled%s\n",
                    arch, file, name, regs, smem, stack, spill_st, spill_ld,
                    spills ? "  SPILLS" : ""
                if (spills) bad = 1
            }
            END { exit bad }' <<<"$report"; then
            echo "error: $stem spills registers or uses a stack frame on sm_$arch"
            status=1
        fi
    done
done

if [[ $status -eq 0 ]]; then
    echo "compile-kernels: ok (all kernels compile for compute_80/90; no spills, no stack)"
else
    echo "compile-kernels: FAILED"
fi
exit $status
