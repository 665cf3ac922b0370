#!/usr/bin/env python3
"""Writes the hostile-input corpus under tests/hostile/ (standard library only).

    python3 tests/hostile/make_corpus.py target/debug/polyhead

data/    malformed (and a few legal but awkward) tables and text inputs
models/  a small good model and damaged copies of it
state/   a small run (training table, model, resumable state) and damaged
         copies of its state

The expected outcome of each file is in tests/hostile_corpus.rs; every
file here must be named there. Large inputs (lines of 10 and 17 MB, huge
vocabularies) are made by the tests at run time, not stored.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BOM = b"\xef\xbb\xbf"
GOOD_TSV = b"text\ttopic\tmood\na b c\tx\tp\nd e f\ty\tq\ng h\tx\tq\n"


def write(folder, name, data):
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    with open(os.path.join(HERE, folder, name), "wb") as f:
        f.write(data)


def data_files():
    files = {
        # Invalid UTF-8 at several positions.
        "utf8_in_header.tsv": b"te\xc3xt\ttopic\na\tx\n",
        "utf8_text_start.tsv": b"text\ttopic\na\tx\n\xffb\ty\n",
        "utf8_in_label.tsv": b"text\ttopic\nhello\tx\xff\n",
        "utf8_cut_at_eof.tsv": b"text\ttopic\nhello\tx\nab\xe2\x82",
        "utf8_overlong.tsv": b"text\ttopic\nab\xc0\xaf\tx\n",
        "utf8_surrogate.jsonl": b'{"text": "a\xed\xa0\x80", "topic": "x"}\n',
        "utf8_in_quoted_newline.csv": b'text,topic\n"multi\nline \xff",x\n',
        "utf8_predict.txt": b"fine line\n\xfe starts badly\n",
        "utf16_with_bom.tsv": "text\ttopic\na\tx\n".encode("utf-16"),
        # Byte-order marks.
        "bom_in_header.tsv": BOM + b"text\ttopic\na b\tx\nc d\ty\n",
        "bom_in_header.csv": BOM + b"text,topic\na b,x\nc d,y\n",
        "bom_middle_line.tsv": b"topic\ttext\nx\ta b\n" + BOM + b"y\tc d\n",
        "bom_joined_files.tsv": BOM + b"text\ttopic\na\tx\n" + BOM + b"text\ttopic\nb\ty\n",
        "bom_twice_at_start.tsv": BOM + BOM + b"text\ttopic\na\tx\n",
        "bom_middle_record.csv": b"text,topic\na,x\n" + BOM + b"b,y\n",
        # Line ends.
        "crlf_mixed_with_lf.tsv": b"text\ttopic\r\na b\tx\r\nc d\ty\nd e\tx\r\n",
        "cr_only.tsv": b"text\ttopic\ra\tx\rb\ty\r",
        "csv_crlf_error_line.csv": b"text,topic\r\na,x\r\n\r\nb,y\r\nc,x,z\r\n",
        "csv_crlf_records.csv": b'text,topic\r\na,x\r\n"two\r\nlines",y\r\n\r\nc,x\r\n',
        "cr_only.jsonl": b'{"text": "a", "topic": "x"}\r{"text": "b", "topic": "y"}\r',
        # Rows and quoting.
        "row_short.tsv": b"text\ttopic\tmood\na\tx\tp\nb\n c\ty\tq\n",
        "row_long.csv": b"text,topic\na,x\nb,y,z\n",
        "csv_unterminated_quote.csv": b'text,topic\na,x\n"b, y\nc,x\nd,y\n',
        "csv_quote_in_header.csv": b'"text,topic\na,x\n',
        "csv_stray_quotes.csv": b'text,topic\na "quoted" word,x\n"ab"cd,y\n',
        "tsv_quotes_are_text.tsv": b'text\ttopic\n"hello\tx\nsay "hi"\ty\n"a\tb"\n',
        # Labels and texts.
        "one_class.tsv": b"text\ttopic\na b\tx\nc d\tx\n",
        "header_only.csv": b"text,topic\n",
        "empty.csv": b"",
        "empty.jsonl": b"",
        "blank_lines_only.jsonl": b"\n   \n\n",
        "all_texts_empty.tsv": b"text\ttopic\n\tx\n\ty\n",
        "all_texts_blank.tsv": "text\ttopic\n   \tx\n\u3000\u00a0\ty\n".encode(),
        "some_texts_empty.tsv": b"text\ttopic\na b\tx\n\ty\n  \tx\nc d\ty\n",
        "header_duplicate.csv": b"text,topic,topic\na,x,y\n",
        "header_duplicate_after_trim.tsv": b"text\ttopic\t topic \na\tx\ty\n",
        "header_empty_name.tsv": b"text\ttopic\t\na\tx\t\n",
        "eval_missing_task_column.tsv": b"text\ttopic\na b c\tx\n",
        "eval_task_all_missing.tsv": b"text\ttopic\tmood\na b c\tx\t\nd e\ty\t\n",
        "eval_unseen_label.tsv": b"text\ttopic\tmood\na b c\tx\tp\nd e\tweather\tq\n",
        "valid_unseen_label.tsv": b"text\ttopic\tmood\na b\tx\tp\nc d\tx\tsad\n",
        # NUL bytes.
        "nul_in_text.tsv": b"text\ttopic\na\x00b\tx\nc\ty\n",
        "nul_in_field.csv": b'text,topic\n"multi\nli\x00ne",x\n',
        "nul_predict.txt": b"a b\nc\x00d\n",
        # JSON Lines.
        "json_field_array.jsonl": b'{"text": ["a", "b"], "topic": "x"}\n',
        "json_field_object.jsonl": b'{"text": "a", "topic": {"x": 1}}\n',
        "json_number_labels.jsonl": b'{"text": "a b", "topic": 1}\n{"text": "c d", "topic": 2}\n'
        + b'{"text": "e", "topic": true}\n',
        "json_top_number.jsonl": b'{"text": "a", "topic": "x"}\n42\n',
        "json_top_string.jsonl": b'"just a text"\n',
        "json_top_null.jsonl": b"null\n",
        "json_duplicate_key.jsonl": b'{"text": "a", "topic": "x", "topic": "y"}\n',
        "json_trailing_comma.jsonl": b'{"text": "a", "topic": "x",}\n',
        "json_unterminated_string.jsonl": b'{"text": "a, "topic": "x"}\n',
        "json_deep_nesting.jsonl": b'{"text": ' + b"[" * 300 + b"]" * 300 + b', "topic": "x"}\n',
        "json_missing_text.jsonl": b'{"topic": "x"}\n{"body": "a", "topic": "y"}\n',
    }
    for name, data in files.items():
        write("data", name, data)


def run(polyhead, folder, *args):
    subprocess.run([polyhead, *args], cwd=folder, check=True, capture_output=True)


def read_st(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = raw[8 + n :]
    tensors = {
        name: (
            info["dtype"],
            info["shape"],
            data[info["data_offsets"][0] : info["data_offsets"][1]],
        )
        for name, info in header.items()
    }
    return raw, meta, tensors


def build_st(meta, tensors):
    header = {} if meta is None else {"__metadata__": meta}
    offset, blob = 0, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blob += data
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


def model_files(polyhead):
    work = tempfile.mkdtemp()
    with open(os.path.join(work, "train.tsv"), "wb") as f:
        f.write(GOOD_TSV)
    run(
        polyhead,
        work,
        "train",
        "--data",
        "train.tsv",
        "--epochs",
        "1",
        "--embed-dim",
        "4",
        "--filters",
        "3",
        "--kernel-size",
        "2",
        "--hidden",
        "2",
        "--seed",
        "1",
        "-q",
        "--out",
        "good.safetensors",
    )
    raw, meta, tensors = read_st(os.path.join(work, "good.safetensors"))
    shutil.rmtree(work)
    config = json.loads(meta["config"])
    vocab = json.loads(meta["vocab"])

    def with_meta(**changes):
        m = dict(meta)
        m.update(changes)
        return m

    def with_config(**changes):
        c = json.loads(meta["config"])
        c.update(changes)
        return with_meta(config=json.dumps(c))

    def with_tensor(name, value=None, drop=False):
        t = dict(tensors)
        if drop:
            del t[name]
        else:
            t[name] = value
        return t

    dtype, shape, bias = tensors["conv.bias"]
    nan = struct.pack("<f", float("nan"))
    inf = struct.pack("<f", float("inf"))
    emb = tensors["embedding.weight"]
    task0 = dict(config["tasks"][0])
    files = {
        "good.safetensors": raw,
        "empty.safetensors": b"",
        "truncated.safetensors": raw[:-8],
        "cut_in_header.safetensors": raw[:40],
        "header_length_1tib.safetensors": struct.pack("<Q", 1 << 40) + raw[8:],
        "header_length_past_end.safetensors": struct.pack("<Q", len(raw)) + raw[8:],
        "header_not_json.safetensors": raw[:8] + b"[" + raw[9:],
        "header_key_altered.safetensors": raw.replace(b'"data_offsets"', b'"data_offsetz"', 1),
        "header_offset_altered.safetensors": raw.replace(
            b'"data_offsets":[0,', b'"data_offsets":[4,', 1
        ),
        "not_safetensors.bin": b"\x80\x04\x95" + bytes(64),
        "shape_vs_config.safetensors": build_st(with_config(filters=4), tensors),
        "embedding_transposed.safetensors": build_st(
            meta, with_tensor("embedding.weight", (emb[0], emb[1][::-1], emb[2]))
        ),
        "tensor_missing.safetensors": build_st(meta, with_tensor("conv.bias", drop=True)),
        "labels_vs_config.safetensors": build_st(
            with_meta(labels=json.dumps({t["name"]: t["classes"][::-1] for t in config["tasks"]})),
            tensors,
        ),
        # The lowest mantissa bit of the first conv bias: still a valid,
        # finite model, caught only by the checksum.
        "bias_bit_flipped.safetensors": build_st(
            meta, with_tensor("conv.bias", (dtype, shape, bytes([bias[0] ^ 1]) + bias[1:]))
        ),
        "tensor_extra.safetensors": build_st(
            meta, {**tensors, "extra.weight": ("F32", [1], bytes(4))}
        ),
        "tensor_nan.safetensors": build_st(
            meta, with_tensor("conv.bias", (dtype, shape, nan + bias[4:]))
        ),
        "tensor_inf.safetensors": build_st(
            meta, with_tensor("conv.bias", (dtype, shape, bias[:-4] + inf))
        ),
        "dtype_f16.safetensors": build_st(
            meta, with_tensor("conv.bias", ("F16", shape, bias[: len(bias) // 2]))
        ),
        "dtype_i32.safetensors": build_st(meta, with_tensor("conv.bias", ("I32", shape, bias))),
        "vocab_object.safetensors": build_st(with_meta(vocab='{"<pad>": 0, "<unk>": 1}'), tensors),
        "vocab_string.safetensors": build_st(with_meta(vocab='"<pad> <unk> a b"'), tensors),
        "vocab_bad_json.safetensors": build_st(with_meta(vocab='["<pad>", "<unk>",'), tensors),
        "vocab_numbers.safetensors": build_st(
            with_meta(vocab=json.dumps(list(range(len(vocab))))), tensors
        ),
        "vocab_too_long.safetensors": build_st(
            with_meta(vocab=json.dumps(vocab + ["extra"])), tensors
        ),
        "vocab_too_short.safetensors": build_st(with_meta(vocab=json.dumps(vocab[:-1])), tensors),
        "vocab_no_specials.safetensors": build_st(
            with_meta(vocab=json.dumps(["a"] + vocab[1:])), tensors
        ),
        "vocab_duplicate.safetensors": build_st(
            with_meta(vocab=json.dumps(vocab[:3] + [vocab[2]] + vocab[4:])), tensors
        ),
        "metadata_none.safetensors": build_st(None, tensors),
        "metadata_no_config.safetensors": build_st(
            {k: v for k, v in meta.items() if k != "config"}, tensors
        ),
        "metadata_no_vocab.safetensors": build_st(
            {k: v for k, v in meta.items() if k != "vocab"}, tensors
        ),
        "metadata_no_version.safetensors": build_st(
            {k: v for k, v in meta.items() if k != "format_version"}, tensors
        ),
        "format_version_future.safetensors": build_st(with_meta(format_version="2"), tensors),
        "format_version_text.safetensors": build_st(with_meta(format_version="one"), tensors),
        "format_other.safetensors": build_st(with_meta(format="pytorch"), tensors),
        "config_bad_json.safetensors": build_st(with_meta(config='{"embed_dim": 4'), tensors),
        "config_huge_sizes.safetensors": build_st(
            with_config(embed_dim=65536, filters=65536, kernel_size=65536), tensors
        ),
        "config_size_zero.safetensors": build_st(with_config(kernel_size=0), tensors),
        "config_no_tasks.safetensors": build_st(with_config(tasks=[]), tensors),
        "config_task_twice.safetensors": build_st(with_config(tasks=[task0, task0]), tensors),
        "config_class_twice.safetensors": build_st(
            with_config(tasks=[dict(task0, classes=["x", "x"])] + config["tasks"][1:]), tensors
        ),
    }
    for name, data in files.items():
        write("models", name, data)
    write("models", "predict.txt", b"a b c\n")


def state_files(polyhead):
    write("state", "train.tsv", GOOD_TSV)
    work = tempfile.mkdtemp()
    shutil.copy(os.path.join(HERE, "state", "train.tsv"), work)
    run(polyhead, work, *RUN_ARGS, "--out", "m.safetensors")
    shutil.copy(os.path.join(work, "m.safetensors"), os.path.join(HERE, "state", "m.safetensors"))
    raw, meta, tensors = read_st(os.path.join(work, "m.state.safetensors"))
    shutil.rmtree(work)

    # The finished run (epoch 3 of 2) rewound to the start of epoch 2: one
    # epoch of 2 batches done, so 2 Adam steps and one epoch of losses.
    run_state = json.loads(meta["run"])
    run_state.update(epoch=2, batches_done=0)
    run_state["weighting"]["epoch_losses"] = run_state["weighting"]["epoch_losses"][:1]
    base = dict(meta, run=json.dumps(run_state), step="2")

    def with_run(change):
        r = json.loads(base["run"])
        change(r)
        return dict(base, run=json.dumps(r))

    p_dtype, p_shape, params = tensors["params"]
    v_dtype, v_shape, v = tensors["adam.v"]
    files = {
        "base.state.safetensors": build_st(base, tensors),
        "empty.state.safetensors": b"",
        "truncated.state.safetensors": build_st(base, tensors)[:-8],
        "header_altered.state.safetensors": build_st(base, tensors).replace(
            b'"dtype"', b'"dtipe"', 1
        ),
        "params_short.state.safetensors": build_st(
            base, {**tensors, "params": (p_dtype, [p_shape[0] - 1], params[:-4])}
        ),
        "adam_v_nan.state.safetensors": build_st(
            base, {**tensors, "adam.v": (v_dtype, v_shape, struct.pack("<f", float("nan")) + v[4:])}
        ),
        "adam_v_negative.state.safetensors": build_st(
            base, {**tensors, "adam.v": (v_dtype, v_shape, struct.pack("<f", -1.0) + v[4:])}
        ),
        "tensor_extra.state.safetensors": build_st(
            base, {**tensors, "extra": ("F32", [1], bytes(4))}
        ),
        "run_mix_short.state.safetensors": build_st(
            with_run(lambda r: r.update(mix_total=[0.0])), tensors
        ),
        "run_losses_short.state.safetensors": build_st(
            with_run(lambda r: r["weighting"].update(epoch_losses=[[0.5]])), tensors
        ),
        "run_epoch_zero.state.safetensors": build_st(
            with_run(lambda r: r.update(epoch=0)), tensors
        ),
        "run_batches_past_epoch.state.safetensors": build_st(
            with_run(lambda r: r.update(batches_done=1 << 62)), tensors
        ),
        "run_not_json.state.safetensors": build_st(dict(base, run="{epoch: 2}"), tensors),
        "step_huge.state.safetensors": build_st(dict(base, step=str((1 << 64) - 1)), tensors),
        "step_not_number.state.safetensors": build_st(dict(base, step="-1"), tensors),
        "options_not_strings.state.safetensors": build_st(
            dict(base, options=json.dumps({**json.loads(meta["options"]), "--epochs": 2})), tensors
        ),
        "format_other.state.safetensors": build_st(dict(base, format="polyhead"), tensors),
        "vocab_too_long.state.safetensors": build_st(
            dict(base, vocab=json.dumps(json.loads(meta["vocab"]) + ["extra"])), tensors
        ),
        "fingerprint_other.state.safetensors": build_st(
            dict(base, data_fingerprint="0" * 16), tensors
        ),
        # The lowest mantissa bit of the first parameter: still a valid,
        # finite state, caught only by the checksum.
        "params_bit_flipped.state.safetensors": build_st(
            base, {**tensors, "params": (p_dtype, p_shape, bytes([params[0] ^ 1]) + params[1:])}
        ),
    }
    for name, data in files.items():
        write("state", name, data)


# The options of the stored run; tests/hostile_corpus.rs resumes with the same.
RUN_ARGS = [
    "train",
    "--train",
    "train.tsv",
    "--epochs",
    "2",
    "--embed-dim",
    "4",
    "--filters",
    "3",
    "--kernel-size",
    "2",
    "--hidden",
    "2",
    "--batch-size",
    "2",
    "--seed",
    "1",
    "-q",
]

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    polyhead = os.path.abspath(sys.argv[1])
    data_files()
    model_files(polyhead)
    state_files(polyhead)
