#!/usr/bin/env bash
# The one prepared GPU check, for the lent GPU machine (one H200, CUDA 13
# driver, nvcc 13, PyTorch with CUDA; no Rust toolchain, no network).
# Prepare here first with scripts/gpu-prepare.sh, then run from the
# repository root there with `.device` carried:
#
#   bash scripts/gpu-check.sh
#
# Steps, each under its own time limit (about 6 minutes in all):
#   1. the GPU parity tests (.device/tests/cuda_backend): every kernel
#      against the CPU backend, whole steps, determinism; a test that
#      reports itself skipped counts as a failure here;
#   2. `polyhead bench --backend cuda --json` at the bench shape
#      (B 256, L 128, D 128, F 128, k 5, V 30000, tasks of 10 and 2 classes);
#   3. the PyTorch peer's bench on the GPU with bf16 autocast, then also
#      with torch.compile;
#   4. an end-to-end `polyhead train --gpu 0` on bench-mix;
#   3c. the bf16 matrix peak measured with torch.matmul (8192^3);
#   5. a table: examples/s of each, the ratios, achieved TFLOP/s of the
#      fused forward against that peak, and accuracy against the CPU run's
#      figure at the same epoch.
#
# Environment: OUT (where logs and JSON go; the device tool sets it),
# POLYHEAD_BENCH_ARGS (extra bench flags), TRAIN_EPOCHS (default 2),
# CPU_ACCURACY (mean validation accuracy of the same training on the CPU;
# or .device/cpu-metrics.jsonl from the prepare step).
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail

dev=.device
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
epochs=${TRAIN_EPOCHS:-2}
start=$(date +%s)
failures=()
export PYTHONUNBUFFERED=1

section() { echo; echo "== $* [t+$(($(date +%s) - start))s]"; }
failed() { failures+=("$1"); echo "FAILED: $1"; }

if [[ ! -x $dev/tests/cuda_backend || ! -x $dev/bin/polyhead ]]; then
    echo "gpu-check: $dev is missing or incomplete:" \
        "run scripts/gpu-prepare.sh and carry .device" >&2
    exit 1
fi

section "machine"
cat $dev/manifest.txt 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
nvcc --version 2>/dev/null | tail -n1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' || true
$dev/bin/polyhead info 2>&1 | head -n 20 || true

section "1. GPU parity tests"
timeout 240 $dev/tests/cuda_backend --test-threads=1 --nocapture >"$out/tests.log" 2>&1
tests_rc=$?
wanted="seed|rel err|windows:|differ after|bit-identical|equals forward|all_finite"
wanted+="|skipped|panicked|^test |test result"
grep -E "$wanted" \
    "$out/tests.log" | cut -c1-160 | tail -n 120
# With --nocapture a test's "ok" may land on a line of its own: count from
# the harness's result line. Each skip prints its reason twice.
result=$(grep -E "^test result:" "$out/tests.log" | tail -n1)
tests_passed=$(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$result")
tests_failed=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$result")
tests_skipped=$(( $(grep -c "skipped: " "$out/tests.log") / 2 ))
if ((tests_rc == 124)); then failed "parity tests timed out"; fi
if ((tests_rc != 0)); then failed "parity tests (exit $tests_rc)"; fi
if ((tests_skipped > 0)); then failed "parity tests skipped on a GPU machine"; fi

section "2. polyhead bench (cuda)"
# shellcheck disable=SC2086
timeout 150 $dev/bin/polyhead bench --backend cuda --gpu 0 --batch 256 --max-len 128 \
    --embed-dim 128 --filters 128 --kernel-size 5 --vocab-size 30000 --classes 10,2 \
    --json ${POLYHEAD_BENCH_ARGS:-} >"$out/bench-polyhead.out" 2>"$out/bench-polyhead.err"
rc=$?
tail -n 5 "$out/bench-polyhead.err"
tail -n 1 "$out/bench-polyhead.out" >"$out/bench-polyhead.json"
cat "$out/bench-polyhead.json"
((rc == 0)) || failed "polyhead bench (exit $rc)"
grep -q '"step"' "$out/bench-polyhead.json" || failed "polyhead bench printed no JSON result"

section "3a. peer bench, bf16 autocast"
timeout 120 python3 $dev/peer/torch_mtcnn.py bench --device cuda --amp bf16 \
    --out "$out/bench-peer-bf16.json" >"$out/bench-peer-bf16.log" 2>&1
rc=$?
grep -E "median" "$out/bench-peer-bf16.log"
((rc == 0)) || { tail -n 5 "$out/bench-peer-bf16.log"; failed "peer bench bf16 (exit $rc)"; }

section "3b. peer bench, bf16 autocast + torch.compile"
timeout 200 python3 $dev/peer/torch_mtcnn.py bench --device cuda --amp bf16 --compile \
    --out "$out/bench-peer-compile.json" >"$out/bench-peer-compile.log" 2>&1
rc=$?
grep -E "median" "$out/bench-peer-compile.log"
((rc == 0)) || { tail -n 5 "$out/bench-peer-compile.log"; failed "peer bench compile (exit $rc)"; }

section "3c. measured bf16 matrix peak (torch.matmul, 8192^3)"
timeout 90 python3 - "$out/bf16-peak.json" <<'PEAK' 2>&1 | tail -n 3
import json, sys
import torch

n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(5):
    a @ b
torch.cuda.synchronize()
times = []
for _ in range(20):
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    a @ b
    end.record()
    torch.cuda.synchronize()
    times.append(begin.elapsed_time(end) / 1e3)
median = sorted(times)[len(times) // 2]
tflops = 2 * n**3 / median / 1e12
with open(sys.argv[1], "w") as fh:
    json.dump({"n": n, "median_s": median, "tflops": tflops}, fh)
print(f"bf16 matmul {n}^3: median {median * 1e3:.2f} ms, {tflops:.1f} TFLOP/s")
PEAK
[[ -s "$out/bf16-peak.json" ]] || failed "bf16 matrix peak not measured"

section "4. polyhead train --gpu 0 on bench-mix ($epochs epochs)"
data=$dev/data/bench-mix
timeout 200 $dev/bin/polyhead train --train $data/train.tsv --valid $data/valid.tsv \
    --gpu 0 --epochs "$epochs" --out /tmp/gpu-check-model.safetensors \
    --metrics-out "$out/train-metrics.jsonl" >"$out/train.log" 2>&1
rc=$?
tail -n 8 "$out/train.log"
((rc == 0)) || failed "polyhead train --gpu 0 (exit $rc)"
[[ -s "$out/train-metrics.jsonl" ]] || failed "polyhead train wrote no metrics"

section "5. summary"
python3 - "$out" "$dev" "${CPU_ACCURACY:-}" "$tests_passed" "$tests_failed" "$tests_skipped" \
    "$(($(date +%s) - start))" <<'EOF'
import json, os, sys

out, dev, cpu_acc, passed, failed, skipped, elapsed = sys.argv[1:]

def load(name):
    try:
        with open(os.path.join(out, name)) as fh:
            return json.loads(fh.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

def mean_accuracy(report):
    valid = (report or {}).get("valid") or {}
    accs = [v.get("accuracy") for v in valid.values() if isinstance(v, dict) and "accuracy" in v]
    return sum(accs) / len(accs) if accs else None

def last_metrics(path, epoch=None):
    """The line of `epoch` (default: the last line) of a --metrics-out file."""
    try:
        with open(path) as fh:
            lines = [json.loads(l) for l in fh if l.strip()]
    except (OSError, ValueError):
        return None
    if epoch is not None:
        lines = [l for l in lines if l.get("epoch") == epoch]
    return lines[-1] if lines else None

runs = [("polyhead cuda", load("bench-polyhead.json")),
        ("peer bf16", load("bench-peer-bf16.json")),
        ("peer bf16 + compile", load("bench-peer-compile.json"))]
peer = {name: r["step"]["examples_per_s"] for name, r in runs[1:] if r and "step" in r}
print(f"{'run':<22}{'forward ex/s':>14}{'step ex/s':>12}{'step vs bf16':>14}"
      f"{'vs compile':>12}{'fwd TFLOP/s':>13}")
for name, r in runs:
    if not r or "step" not in r:
        print(f"{name:<22}{'(no result)':>14}")
        continue
    fwd, step = r["forward"]["examples_per_s"], r["step"]["examples_per_s"]
    ratio = lambda key: f"{step / peer[key]:.2f}x" if key in peer else "-"
    tflops = r["forward"].get("conv_fwd_gflop_per_s", 0) / 1e3
    print(f"{name:<22}{fwd:>14,.0f}{step:>12,.0f}{ratio('peer bf16'):>14}"
          f"{ratio('peer bf16 + compile'):>12}{tflops:>13.1f}")
print("fwd TFLOP/s = nominal conv FLOPs 2*B*(L-k+1)*F*D*k over the whole forward's median time")
peak = load("bf16-peak.json")
ours = runs[0][1]
if peak and ours and "forward" in ours:
    tflops = ours["forward"].get("conv_fwd_gflop_per_s", 0) / 1e3
    print(f"fused forward: {tflops:.1f} TFLOP/s = {100 * tflops / peak['tflops']:.1f}% of the "
          f"measured bf16 matrix peak ({peak['tflops']:.1f} TFLOP/s)")
else:
    print("fused forward vs bf16 peak: missing figure")

gpu = last_metrics(os.path.join(out, "train-metrics.jsonl"))
# The CPU run may have trained longer: compare at the GPU run's epoch.
cpu_metrics = last_metrics(os.path.join(dev, "cpu-metrics.jsonl"), (gpu or {}).get("epoch"))
cpu = float(cpu_acc) if cpu_acc else mean_accuracy(cpu_metrics)
acc = mean_accuracy(gpu)
if gpu:
    line = (f"train bench-mix on GPU: {gpu.get('epoch')} epochs, last epoch "
            f"{gpu.get('examples_per_second', 0):,.0f} ex/s, mean valid accuracy "
            f"{acc:.4f}" if acc is not None else "train: no accuracy in metrics")
    if acc is not None and cpu is not None:
        line += f" vs CPU {cpu:.4f} (diff {acc - cpu:+.4f})"
    elif acc is not None:
        line += " (no CPU figure given: CPU_ACCURACY)"
    print(line)
    cpu_valid = (cpu_metrics or {}).get("valid") or {}
    for task, scores in ((gpu or {}).get("valid") or {}).items():
        if task in cpu_valid:
            g, c = scores["accuracy"], cpu_valid[task]["accuracy"]
            print(f"  {task:<12} accuracy GPU {g:.4f} CPU {c:.4f} ({100 * (g - c):+.2f} points)")
else:
    print("train bench-mix on GPU: no metrics")
print(f"parity tests: {passed or '?'} passed, {failed or '?'} failed, {skipped} skipped;"
      f" check took {elapsed} s")
EOF

if ((${#failures[@]} > 0)); then
    echo "gpu-check: FAILED: $(IFS=";"; echo "${failures[*]}")"
    exit 1
fi
echo "gpu-check: ok"
