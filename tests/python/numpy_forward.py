"""Recompute polyhead's predictions with NumPy from the model file alone.

Usage: numpy_forward.py MODEL.safetensors PREDICTIONS.jsonl

PREDICTIONS.jsonl is `polyhead predict --probs --explain-tokens` output: one
object per text with its token ids and each task's probabilities. The
forward pass below is written from the model's definition (embedding,
convolution over valid windows, ReLU, max over time, one two-layer head per
task, softmax), in float64. Prints the largest absolute difference and
exits 1 if it exceeds 1e-5.
"""

import json
import sys

import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        tensors = {name: f.get_tensor(name).astype(np.float64) for name in f.keys()}
    config = json.loads(meta["config"])
    return config, tensors


def forward(config, t, ids):
    k = config["kernel_size"]
    emb = t["embedding.weight"][np.asarray(ids, dtype=np.int64)]
    if len(ids) < k:
        emb = np.vstack([emb, np.zeros((k - len(ids), emb.shape[1]))])
    w = t["conv.weight"]  # [F, D, k]
    windows = emb.shape[0] - k + 1
    z = np.stack([np.einsum("fdj,jd->f", w, emb[s:s + k]) for s in range(windows)])
    h = np.maximum(0.0, (z + t["conv.bias"]).max(axis=0))
    out = {}
    for task in config["tasks"]:
        name = task["name"]
        a = np.maximum(0.0, t[f"heads.{name}.hidden.weight"] @ h + t[f"heads.{name}.hidden.bias"])
        o = t[f"heads.{name}.out.weight"] @ a + t[f"heads.{name}.out.bias"]
        e = np.exp(o - o.max())
        out[name] = e / e.sum()
    return out


def main():
    config, tensors = load(sys.argv[1])
    assert np.all(tensors["embedding.weight"][0] == 0), "padding row must be zero"
    worst, rows = 0.0, 0
    with open(sys.argv[2], encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            ours = forward(config, tensors, record["ids"])
            for name, probs in ours.items():
                theirs = np.asarray(record["tasks"][name]["probabilities"], dtype=np.float64)
                worst = max(worst, float(np.abs(theirs - probs).max()))
            rows += 1
    print(f"numpy forward: {rows} texts, {len(config['tasks'])} tasks, max |diff| {worst:.3e}")
    if rows == 0 or worst > 1e-5:
        sys.exit(1)


if __name__ == "__main__":
    main()
