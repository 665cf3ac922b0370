"""A polyhead model as a PyTorch module, with polyhead's tokenizer.

Written by `polyhead export --format torch`. Needs PyTorch and the Python
standard library only: the weights are read straight from the polyhead
model file (safetensors: an 8-byte header length, a JSON header, raw
little-endian float32 data), which stays the one source of truth.

    import this_module as m
    model, tokenizer = m.load()          # or m.load("other.safetensors")
    probs = model(tokenizer.batch(["great fit", "fell apart after a week"]))
    probs["topic"]                       # float32 [2, classes]
    model.labels["topic"]                # class names, in the same order

Token ids (`PolyheadModel.forward`): int64 [batch, length], one text per
row, right-padded with 0 (PAD); 1 is an unknown word. A text's length is
its number of non-zero ids; texts shorter than the kernel width are padded
up to it, and convolution windows past a text's end are left out of the
max, so a prediction never depends on the rest of the batch.
"""

import array
import json
import os
import struct
import sys
import unicodedata

import torch
from torch import nn

# The polyhead model file this module was exported from; a relative path is
# taken from this module's folder.
MODEL_FILE = __POLYHEAD_MODEL_FILE__

FORMAT_VERSION = "1"
TOKENIZER_VERSION = 1
PAD = 0
UNK = 1

# Header sizes beyond this are refused before anything is allocated (the
# safetensors library's own limit).
MAX_HEADER_BYTES = 100_000_000


class ModelFileError(ValueError):
    """The model file is damaged, or not a polyhead model."""


# ---------------------------------------------------------------------------
# Tokenizer (polyhead's rule, version 1)

_DROPPED, _SPACE, _SOLO, _WORD, _OTHER = range(5)

# Scripts written without spaces between words: one token per character.
_SOLO_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007),  # ideographic iteration mark, closing mark, zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3038, 0x303B),
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)


def _is_solo(code):
    return any(low <= code <= high for low, high in _SOLO_RANGES)


def _classify(char):
    category = unicodedata.category(char)
    if category == "Cf":
        return _DROPPED
    if category in ("Zs", "Zl", "Zp", "Cc"):
        return _SPACE
    if _is_solo(ord(char)):
        return _SOLO
    if category[0] in "LMN" or category == "Pc":
        return _WORD
    return _OTHER


def _is_digit(char):
    return unicodedata.category(char) == "Nd"


class Tokenizer:
    """Text to token ids, as polyhead does it.

    1. With `lowercase`, the text is lower-cased (full Unicode mapping).
    2. Format characters (Cf) are dropped; separators (Zs, Zl, Zp) and
       controls (Cc) are spaces; characters of scripts written without
       spaces are tokens on their own; letters, marks, numbers and connector
       punctuation (L*, M*, N*, Pc) are word characters; anything else is a
       token on its own.
    3. A token is a maximal run of word characters, where an apostrophe
       (' or U+2019) between two word characters and a '.' or ',' between
       two decimal digits stay inside the run.

    Categories come from this Python's `unicodedata`
    (`unicodedata.unidata_version`); polyhead may know a newer Unicode
    version, so characters assigned since can be classified differently.
    """

    def __init__(self, vocab, lowercase=True, max_len=None):
        self.vocab = list(vocab)
        if self.vocab[:2] != ["<pad>", "<unk>"]:
            raise ValueError('the vocabulary must start with "<pad>", "<unk>"')
        self.ids = {word: i for i, word in enumerate(self.vocab) if i >= 2}
        self.lowercase = lowercase
        self.max_len = max_len

    def tokens(self, text):
        """The tokens of `text`, in order (not cut to `max_len`)."""
        if self.lowercase:
            text = text.lower()
        chars = [(c, k) for c, k in ((c, _classify(c)) for c in text) if k != _DROPPED]
        out = []
        word = []
        for i, (char, kind) in enumerate(chars):
            if kind == _WORD:
                joins = True
            elif kind == _OTHER and word:
                following = chars[i + 1] if i + 1 < len(chars) else None
                joins = (
                    char in "'\u2019" and following is not None and following[1] == _WORD
                ) or (
                    char in ".,"
                    and _is_digit(chars[i - 1][0])
                    and following is not None
                    and _is_digit(following[0])
                )
            else:
                joins = False
            if joins:
                word.append(char)
                continue
            if word:
                out.append("".join(word))
                word = []
            if kind in (_SOLO, _OTHER):
                out.append(char)
        if word:
            out.append("".join(word))
        return out

    def encode(self, text):
        """Token ids of `text`, cut to `max_len`; unknown words are 1."""
        tokens = self.tokens(text)
        if self.max_len is not None:
            tokens = tokens[: self.max_len]
        return [self.ids.get(token, UNK) for token in tokens]

    def batch(self, texts):
        """int64 [len(texts), longest] ids, right-padded with 0."""
        rows = [self.encode(text) for text in texts]
        width = max((len(row) for row in rows), default=0)
        out = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out


# ---------------------------------------------------------------------------
# Model


class Head(nn.Module):
    """One task: Linear, ReLU, Linear (logits)."""

    def __init__(self, features, hidden, classes):
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, h):
        return self.out(torch.relu(self.hidden(h)))


class PolyheadModel(nn.Module):
    """Embedding, Conv1d over valid windows, ReLU, max over time, one head
    per task. Parameter names are the model file's tensor names."""

    def __init__(self, config, vocab_size):
        super().__init__()
        self.kernel_size = config["kernel_size"]
        self.labels = {task["name"]: list(task["classes"]) for task in config["tasks"]}
        self.embedding = nn.Embedding(vocab_size, config["embed_dim"])
        self.conv = nn.Conv1d(config["embed_dim"], config["filters"], config["kernel_size"])
        self.heads = nn.ModuleDict()
        for task in config["tasks"]:
            name = task["name"]
            if not name or "." in name or hasattr(self.heads, name):
                raise ModelFileError(f"task name {name!r} cannot be a PyTorch module name")
            self.heads[name] = Head(config["filters"], task["hidden"], len(task["classes"]))

    def features(self, tokens):
        """Pooled features h: float32 [batch, filters]."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, length], not {list(tokens.shape)}")
        k = self.kernel_size
        lengths = (tokens != PAD).sum(dim=1)
        # k more PAD tokens: texts shorter than k reach k, and there is
        # always a window.
        padded = nn.functional.pad(tokens, (0, k), value=PAD)
        z = self.conv(self.embedding(padded).transpose(1, 2))  # [batch, filters, windows]
        window = torch.arange(z.shape[2], device=z.device)
        last_window = lengths.clamp(min=k) - k
        past_end = window[None, :] > last_window[:, None]
        z = z.masked_fill(past_end[:, None, :], float("-inf"))
        return torch.relu(z.amax(dim=2))

    def forward(self, tokens):
        """Per task name: class probabilities, float32 [batch, classes]."""
        h = self.features(tokens)
        return {name: torch.softmax(head(h), dim=-1) for name, head in self.heads.items()}


# ---------------------------------------------------------------------------
# Reading the model file


def read_safetensors(path):
    """(metadata, {name: float32 tensor}) from a safetensors file, checked
    the way the safetensors library checks it: header size, JSON, dtype,
    bytes per shape, byte ranges in order, contiguous and covering the data
    exactly."""

    def fail(reason):
        raise ModelFileError(f"{path}: {reason}")

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            fail(f"{size} bytes is too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            fail(f"header length {header_len} is larger than the limit ({MAX_HEADER_BYTES})")
        if header_len > size - 8:
            fail(f"header length {header_len} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            fail(f"the header is not UTF-8 JSON ({err})")
        data = f.read()
    if not isinstance(header, dict):
        fail("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        fail("__metadata__ is not an object of strings")

    ranges = []
    for name, info in header.items():
        if not isinstance(info, dict):
            fail(f"tensor {name}: entry is not an object")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            fail(f"tensor {name}: shape or data_offsets is not valid")
        if info.get("dtype") != "F32":
            fail(f"tensor {name}: dtype {info.get('dtype')} is not supported (F32 only)")
        count = 1
        for d in shape:
            count *= d
        begin, end = offsets
        if end < begin or end - begin != 4 * count:
            fail(f"tensor {name}: shape {shape} needs {4 * count} bytes, its range {offsets} "
                 f"holds {end - begin}")
        ranges.append((begin, end, name, shape))
    ranges.sort()
    position = 0
    for begin, end, name, _ in ranges:
        if begin != position:
            fail(f"tensor {name}: byte range starts at {begin}, expected {position} "
                 "(ranges must be contiguous and must not overlap)")
        position = end
    if position != len(data):
        fail(f"the tensors take {position} bytes, the file holds {len(data)} after the header")

    tensors = {}
    for begin, end, name, shape in ranges:
        values = array.array("f")
        values.frombytes(data[begin:end])
        if sys.byteorder == "big":
            values.byteswap()
        if len(values) == 0:
            tensors[name] = torch.zeros(shape, dtype=torch.float32)
        else:
            tensors[name] = torch.frombuffer(values, dtype=torch.float32).reshape(shape).clone()
    return metadata, tensors


def load(path=None):
    """(PolyheadModel in eval mode, Tokenizer) from a polyhead model file
    (default: MODEL_FILE)."""
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), MODEL_FILE)
    metadata, tensors = read_safetensors(path)

    def field(key):
        if key not in metadata:
            raise ModelFileError(f'{path}: metadata has no "{key}" entry')
        return metadata[key]

    if field("format") != "polyhead":
        raise ModelFileError(f'{path}: metadata "format" is {field("format")!r}, not "polyhead"')
    if field("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {field('format_version')} is not supported "
            f"(this module reads {FORMAT_VERSION})"
        )
    try:
        config = json.loads(field("config"))
        vocab = json.loads(field("vocab"))
    except ValueError as err:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({err})") from None

    model = PolyheadModel(config, len(vocab))
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in tensors:
            raise ModelFileError(f"{path}: tensor {name} is missing")
        if tuple(tensors[name].shape) != tuple(tensor.shape):
            raise ModelFileError(
                f"{path}: tensor {name} has shape {list(tensors[name].shape)}, "
                f"the metadata implies {list(tensor.shape)}"
            )
    for name in tensors:
        if name not in expected:
            raise ModelFileError(f"{path}: unexpected tensor {name}")
    model.load_state_dict(tensors)
    model.eval()
    tokenizer = Tokenizer(vocab, lowercase=config["lowercase"], max_len=config["max_len"])
    return model, tokenizer
