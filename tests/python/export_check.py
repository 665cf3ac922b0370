"""Run polyhead's exported models in onnxruntime and PyTorch and compare.

Usage: export_check.py PLAN.json

PLAN.json (written by the Rust tests in tests/export_*.rs) names the
exported files and holds token-id texts with polyhead's own probabilities
for them. Each part below runs only when the plan has its key:

- "onnx": the ONNX file is checked (onnx.checker with shape inference, a
  dynamic [batch, length] int64 input, one [batch, C] output per task, no
  pooling operator with a frozen window, polyhead's metadata_props), then
  run with onnxruntime on every text alone and on each of "batches" (texts
  run together, right-padded with 0);
- "torch_module": the generated module is imported, the model loaded from
  the model file, and run on the same inputs;
- "tokenizer_cases": the module's Tokenizer must give polyhead's tokens
  (and ids, where given) for each text;
- "safetensors_cases": the module's safetensors reader must load the good
  file with the given values and refuse every damaged one.

Prints one line per part with the largest absolute difference from
polyhead's probabilities, and exits 1 if any exceeds "tolerance" or any
check fails.
"""

import importlib.util
import json
import sys
import unicodedata

import numpy as np

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL: {message}")


def padded(texts):
    width = max((len(t) for t in texts), default=0)
    out = np.zeros((len(texts), width), dtype=np.int64)
    for b, ids in enumerate(texts):
        out[b, : len(ids)] = ids
    return out


def groups(plan):
    """Every text alone, then each batch of the plan."""
    singles = [[i] for i in range(len(plan["texts"]))]
    return singles + plan.get("batches", [])


def compare(runtime, plan, run):
    """run(tokens [B, L] int64) -> {task: [B, C]}; compares every group."""
    worst = 0.0
    for group in groups(plan):
        outputs = run(padded([plan["texts"][i] for i in group]))
        for row, i in enumerate(group):
            for task, want in plan["expected"][i].items():
                got = np.asarray(outputs[task][row], dtype=np.float64)
                diff = float(np.abs(got - np.asarray(want)).max())
                if not np.isfinite(diff):
                    diff = float("inf")
                worst = max(worst, diff)
    batches = len(plan.get("batches", []))
    largest = max((len(b) for b in plan.get("batches", [])), default=1)
    print(
        f"{runtime}: {len(plan['texts'])} texts alone and in {batches} padded batches "
        f"(up to {largest} rows): max |diff| {worst:.3e}"
    )
    if not worst <= plan["tolerance"]:
        fail(f"{runtime} differs from polyhead by {worst:.3e}")


def check_onnx_file(path, plan):
    import onnx

    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    print(f"onnx {onnx.__version__} checker: ok (ir {model.ir_version}, opset {opset})")

    graph = model.graph
    (tokens,) = graph.input
    dims = [d.dim_param or d.dim_value for d in tokens.type.tensor_type.shape.dim]
    if tokens.type.tensor_type.elem_type != onnx.TensorProto.INT64 or dims != ["batch", "length"]:
        fail(f"input {tokens.name} is not int64 [batch, length]: {dims}")
    labels = plan["labels"]
    names = [o.name for o in graph.output]
    if names != list(labels):
        fail(f"outputs {names}, expected one per task {list(labels)}")
    for out in graph.output:
        dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        if dims != ["batch", len(labels.get(out.name, []))]:
            fail(f"output {out.name} has dims {dims}")
    pools = [n.op_type for n in graph.node if "Pool" in n.op_type]
    if pools:
        fail(f"the graph pools with {pools}")

    props = {p.key: p.value for p in model.metadata_props}
    with open(plan["sidecar"], encoding="utf-8") as f:
        sidecar = json.load(f)
    if json.loads(props.get("labels", "null")) != labels or sidecar["labels"] != labels:
        fail("labels in metadata_props or the sidecar differ from the model's")
    if json.loads(props.get("vocab", "null")) != sidecar["vocab"]:
        fail("vocab in metadata_props differs from the sidecar's")
    if json.loads(props.get("config", "null")) != sidecar["config"]:
        fail("config in metadata_props differs from the sidecar's")
    if props.get("format") != "polyhead" or sidecar.get("format") != "polyhead":
        fail("format is not polyhead")
    tokenizer = json.loads(props.get("tokenizer", "null"))
    if tokenizer != sidecar["tokenizer"] or tokenizer.get("version") != 1:
        fail(f"tokenizer reference {tokenizer} differs from the sidecar's")


def run_onnx(plan):
    import onnxruntime as ort

    check_onnx_file(plan["onnx"], plan)
    session = ort.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(tokens):
        return dict(zip(names, session.run(None, {"tokens": tokens})))

    compare(f"onnxruntime {ort.__version__}", plan, run)


def import_module(path):
    spec = importlib.util.spec_from_file_location("polyhead_export", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_torch(plan, module):
    import torch

    model, _ = module.load()
    if set(model.state_dict()) != set(plan["tensor_names"]):
        fail(f"module parameters {sorted(model.state_dict())} are not the file's tensors")

    def run(tokens):
        with torch.no_grad():
            out = model(torch.from_numpy(tokens))
        return {task: p.numpy() for task, p in out.items()}

    compare(f"torch {torch.__version__}", plan, run)


# The rule's own examples (lower-casing on), independent of the plan.
RULE_EXAMPLES = [
    ("Don't panic!!", ["don't", "panic", "!", "!"]),
    ("3.5 stars, 1,000 times", ["3.5", "stars", ",", "1,000", "times"]),
    ("我爱北京", ["我", "爱", "北", "京"]),
    ("東京タワー", ["東", "京", "タ", "ワ", "ー"]),
    ("한국어 텍스트", ["한", "국", "어", "텍", "스", "트"]),
    ("café ☕", ["café", "☕"]),
    ("snake_case", ["snake_case"]),
    ("soft\u00adware \u200b", ["software"]),
    ("end. Start", ["end", ".", "start"]),
]


def check_rule_examples(module):
    lowered = module.Tokenizer(["<pad>", "<unk>"], lowercase=True)
    for text, want in RULE_EXAMPLES:
        got = lowered.tokens(text)
        if got != want:
            fail(f"tokenizer rule example {text!r}: {got}, expected {want}")
    kept = module.Tokenizer(["<pad>", "<unk>", "Hello"], lowercase=False, max_len=2)
    if kept.tokens("Hello World") != ["Hello", "World"]:
        fail("lowercase=False changed the case")
    if kept.encode("Hello World Hello") != [2, 1]:
        fail("encode does not cut to max_len or map unknown words to 1")
    print(f"tokenizer rule examples: {len(RULE_EXAMPLES) + 2} checked")


def check_tokenizer(plan, module):
    check_rule_examples(module)
    _, tokenizer = module.load()
    texts = [case["text"] for case in plan["tokenizer_cases"][:50]]
    batch = tokenizer.batch(texts).numpy()
    want = padded([tokenizer.encode(text) for text in texts])
    if batch.dtype != np.int64 or not np.array_equal(batch, want):
        fail("Tokenizer.batch is not the right-padded int64 ids")
    compared = mismatched = excused = 0
    for case in plan["tokenizer_cases"]:
        text = case["text"]
        compared += 1
        got = tokenizer.tokens(text)
        ok = got == case["tokens"]
        if ok and "ids" in case:
            ok = tokenizer.encode(text) == case["ids"]
        if ok:
            continue
        # A character this Python's Unicode tables do not know yet may be a
        # letter to polyhead: the rule cannot agree on it.
        if any(unicodedata.category(c) == "Cn" for c in text):
            excused += 1
            continue
        mismatched += 1
        if mismatched <= 5:
            fail(f"tokenizer: {text!r}: polyhead {case['tokens']} python {got}")
    print(
        f"tokenizer (Unicode {unicodedata.unidata_version}): {compared} texts compared, "
        f"{mismatched} differ, {excused} differ on characters unassigned in this Unicode "
        "version (excused)"
    )
    if mismatched:
        fail(f"tokenizer differs on {mismatched} texts")
    if compared == 0:
        fail("tokenizer: nothing compared")


def check_safetensors_reader(plan, module):
    cases = plan["safetensors_cases"]
    good = cases["good"]
    _, tensors = module.read_safetensors(good["path"])
    got = tensors[good["tensor"]].flatten().tolist()
    if got != good["values"]:
        fail(f"{good['path']}: read {got}, expected {good['values']}")
    refused = 0
    for path in cases["bad"]:
        try:
            module.read_safetensors(path)
            fail(f"{path}: damaged file was accepted")
        except module.ModelFileError as err:
            if path not in str(err):
                fail(f"{path}: the error does not name the file: {err}")
            refused += 1
    print(f"safetensors reader: good file read, {refused} of {len(cases['bad'])} damaged refused")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        plan = json.load(f)
    if plan.get("onnx"):
        run_onnx(plan)
    if plan.get("torch_module"):
        module = import_module(plan["torch_module"])
        run_torch(plan, module)
        if plan.get("tokenizer_cases"):
            check_tokenizer(plan, module)
        if plan.get("safetensors_cases"):
            check_safetensors_reader(plan, module)
    if failures:
        print(f"{len(failures)} checks failed")
        sys.exit(1)
    print("all export checks passed")


if __name__ == "__main__":
    main()
