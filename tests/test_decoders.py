"""Decoder language models as classifiers: tiny random Qwen2, Qwen3, Llama, Gemma and BLOOM checkpoints built here, each
under prompt tuning, prefix tuning and LoRA. A padded text must be read exactly as it is alone (the head reads
the last real token), and a federated run trains, records every language and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_DATA, Crash, InProcessGrid, _texts, _tiny_tokenizer

from mfpt.config import load_config
from mfpt.federation.protocol import CONFIG, ROUND_KEY
from mfpt.federation.server import run_federated
from mfpt.model.factory import build_model
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint

pytestmark = pytest.mark.usefixtures("task_identity")

FAMILIES = ("qwen2", "qwen3", "llama", "gemma", "bloom")
METHODS = ("prompt", "ptuning", "prefix", "lora")


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer, hidden-32 random checkpoint of each family with a tokenizer trained on the fixture texts; Llama's
    tokenizer has no pad token (as Llama's own has none)."""
    from transformers import (
        BloomConfig,
        BloomModel,
        GemmaConfig,
        GemmaModel,
        LlamaConfig,
        LlamaModel,
        Qwen2Config,
        Qwen2Model,
        Qwen3Config,
        Qwen3Model,
    )

    tokenizer = _tiny_tokenizer(_texts())
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, bos_token_id=0,
                 eos_token_id=2, pad_token_id=1)
    configs = {"qwen2": (Qwen2Config(**shape), Qwen2Model), "qwen3": (Qwen3Config(head_dim=8, **shape), Qwen3Model),
               "llama": (LlamaConfig(**shape), LlamaModel),
               "gemma": (GemmaConfig(head_dim=8, **shape), GemmaModel),
               "bloom": (BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=2, pad_token_id=1), BloomModel)}
    out = {}
    for family, (config, model_cls) in configs.items():
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        torch.manual_seed(0)
        model_cls(config).save_pretrained(folder)
        if family == "llama":  # no pad token in its tokenizer, as Llama's own has none
            tokenizer.pad_token = None
        tokenizer.save_pretrained(folder)
        tokenizer.pad_token = "<pad>"
        out[family] = folder
    return out


def _config(model: Path, method: str, tmp_path: Path, **overrides):
    return load_config(None, {"name": "decoder", "output_dir": str(tmp_path / "run"), "model.name": str(model),
                              "model.max_seq_length": 32, "data.source": "files", "data.path": str(TINY_DATA),
                              "data.languages": ["en", "sw"], "peft.method": method, "peft.num_virtual_tokens": 4,
                              "federation.rounds": 2, "train.batch_size": 8, "train.lr": 0.01, "train.threads": 1,
                              "train.device": "cpu", **overrides})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_text_is_read_exactly_as_it_is_alone(tiny_decoders, family, method, tmp_path):
    built = build_model(_config(tiny_decoders[family], method, tmp_path), 3)
    model, tokenizer = built.model.eval(), built.tokenizer
    texts = ["health news from the hospital today", "sport"]
    with torch.no_grad():
        batch = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    assert tokenizer(texts, padding=True)["attention_mask"][1].count(0) > 0  # the short text was padded
    assert torch.allclose(batch, alone, atol=1e-5), (family, method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)  # the classification head trains with the method
    # The backbone stays frozen: only the method's own tensors and the head train.
    assert all(any(part in n for part in ("prompt_encoder", "lora_", "score")) for n in trainable), trainable
    if family == "llama":
        assert any("no pad token" in note for note in built.notes)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_federated_run_trains_each_decoder_family_with_each_method(tiny_decoders, family, method, tmp_path):
    cfg = _config(tiny_decoders[family], method, tmp_path, **{"federation.rounds": 1})
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh"}
    assert all(0 <= s.accuracy <= 1 for s in result.per_language.values())
    state = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    before = build_model(cfg, 3).model
    initial = {n: p for n, p in before.named_parameters() if p.requires_grad}
    assert set(state) == {n for n in initial}  # exactly the trainable tensors travel and are saved
    assert any(not torch.allclose(state[n], initial[n].detach()) for n in state)  # and they trained


def test_a_decoder_run_resumes_exactly(tiny_decoders, tmp_path):
    full = _config(tiny_decoders["qwen2"], "prefix", tmp_path, output_dir=str(tmp_path / "full"))
    run_federated(InProcessGrid(2), full, quiet=True)
    cut = full.replace(output_dir=str(tmp_path / "cut"))

    def crash_in_round_2(msg) -> bool:
        return msg.metadata.message_type == "train" and int(msg.content[CONFIG][ROUND_KEY]) == 2

    with pytest.raises(Crash):  # dies as round 2 starts: round 1 is its last checkpoint
        run_federated(InProcessGrid(2, crash=crash_in_round_2), cut, quiet=True)
    run_federated(InProcessGrid(2), cut, quiet=True, resume=True)
    a = load_checkpoint(checkpoint_path(tmp_path / "full", 2)).state
    b = load_checkpoint(checkpoint_path(tmp_path / "cut", 2)).state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_decoder_run_predicts_as_it_was_evaluated(tiny_decoders, tmp_path, method):
    """`mfpt predict` rebuilds the decoder (its pad token, padding side, position ids) as training evaluated it."""
    from test_predict import _assert_training_path_probabilities
    from test_predict import _config as predict_config

    from mfpt.experiments.paradigms import run_experiment

    cfg = predict_config(tiny_decoders["llama"], tmp_path / "run", "centralized").replace(
        **{"peft.method": method, "federation.rounds": 1, "train.max_steps": 2})
    run_experiment(cfg, quiet=True)
    _assert_training_path_probabilities(cfg, tmp_path / "run")


def test_example_level_dp_trains_a_decoder(tiny_decoders, tmp_path):
    cfg = _config(tiny_decoders["gemma"], "prompt", tmp_path, **{"federation.rounds": 1, "privacy.dp": "example",
                                                                 "privacy.noise_multiplier": 1.0})
    result = run_federated(InProcessGrid(2), cfg, quiet=True)
    assert result.privacy["dp"] == "example" and set(result.per_language) == {"eng", "swh"}


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parent.parent / "configs" / "llm").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_the_decoder_presets_validate(preset):
    from mfpt.experiments.preflight import preflight

    cfg = load_config(preset)
    assert cfg.peft.method.value in ("lora", "prompt") and cfg.model.name.startswith("Qwen/")
    assert any(line.startswith("config:") for line in preflight(cfg))
