"""Model factory and trainable-state exchange, parametrised over every PEFT method in the registry."""

from __future__ import annotations

import re

import pytest
import torch

from mfpt.config import PeftMethod
from mfpt.config.specs import METHODS as SPECS
from mfpt.model.factory import apply_method, build_model, count_parameters
from mfpt.model.state import (
    UpdateError,
    check_update,
    load_trainable_state,
    state_distance,
    state_spec,
    trainable_state,
)

METHODS = SPECS.names()


def _batch(classifier, texts=("kiballni the today", "mavotewa law court people")):
    enc = classifier.tokenizer(list(texts), padding=True, return_tensors="pt")
    return dict(enc)


def _logits(classifier, batch):
    classifier.model.eval()
    with torch.no_grad():
        return classifier.model(**batch).logits


def test_registry_has_every_method_of_the_issue():
    assert set(METHODS) == {m.value for m in PeftMethod}


@pytest.mark.parametrize("method", METHODS)
def test_trainable_state_round_trips_exactly(make_config, method):
    """Same logits after save -> load into a fresh model built with another seed (another head init)."""
    source = build_model(make_config(**{"peft.method": method, "seed": 1}), num_labels=3)
    with torch.no_grad():  # move every trainable tensor away from its init, as training would
        for p in source.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    state = trainable_state(source.model)
    target = build_model(make_config(**{"peft.method": method, "seed": 2}), num_labels=3)
    batch = _batch(source)
    assert not torch.allclose(_logits(source, batch), _logits(target, batch))
    load_trainable_state(target.model, state)
    assert torch.equal(_logits(source, batch), _logits(target, batch))


def test_prefix_projection_round_trips(make_config):
    """The reparameterised prefix, which peft's own state-dict round trip cannot load (stack.md §2.2)."""
    cfg = make_config(**{"peft.prefix_projection": True, "peft.encoder_hidden_size": 16})
    source, target = build_model(cfg, 3), build_model(cfg.replace(seed=5), 3)
    load_trainable_state(target.model, trainable_state(source.model))
    assert torch.equal(_logits(source, _batch(source)), _logits(target, _batch(source)))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_encoder_is_frozen_and_the_head_trains(make_config, method):
    model = build_model(make_config(**{"peft.method": method}), 3).model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trainable)
    assert not any("word_embeddings" in n or ("encoder.layer" in n and "lora" not in n) for n in trainable)


def test_full_fine_tuning_trains_everything(make_config):
    classifier = build_model(make_config(**{"peft.method": "full"}), 3)
    assert classifier.trainable_params == classifier.total_params


def test_xlmr_base_shape_prefix_32_has_the_papers_parameter_count():
    """xlm-roberta-base numbers, random weights on the meta device: ~1.2M trainable of ~278M (the paper, §5.4.1)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from mfpt.config import load_config

    config = XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, num_labels=3)
    with torch.device("meta"):
        model = XLMRobertaForSequenceClassification(config)
    trainable, total = count_parameters(apply_method(model, load_config().peft))
    assert 1_100_000 <= trainable <= 1_300_000
    assert 277_000_000 <= total <= 280_000_000
    assert trainable / total < 0.005


def test_missing_pooler_is_trained_with_the_head(make_config, tiny_bert):
    classifier = build_model(make_config(**{"model.name": str(tiny_bert)}), 3)
    trainable = trainable_state(classifier.model)
    assert any("pooler" in n for n in trainable)
    assert any("pooler" in note for note in classifier.notes)


def test_input_prompts_use_up_positions(make_config):
    # Tiny XLM-R: 130 positions - 2 (RoBERTa offset) = 128 usable; 100 virtual tokens leave 28.
    prompt = build_model(make_config(**{"peft.method": "prompt", "peft.num_virtual_tokens": 100,
                                        "model.max_seq_length": 120}), 3)
    assert prompt.max_length == 28
    long_text = " ".join(["kiballni"] * 200)
    enc = prompt.tokenizer([long_text], truncation=True, max_length=prompt.max_length, return_tensors="pt")
    assert prompt.model(**enc).logits.shape == (1, 3)  # no position index error
    prefix = build_model(make_config(**{"peft.num_virtual_tokens": 100, "model.max_seq_length": 120}), 3)
    assert prefix.max_length == 120  # deep prefixes do not consume input positions


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_pool_at_bos_reads_the_real_first_token(make_config, method):
    seen = {}
    classifier = build_model(make_config(**{"peft.method": method, "peft.pool_at": "bos"}), 3)
    head = classifier.model.base_model.classifier.modules_to_save["default"]

    def record(module, args):
        seen["shape"] = tuple(args[0].shape)

    head.register_forward_pre_hook(record)
    batch = _batch(classifier)
    classifier.model(**batch)
    assert seen["shape"][1] == batch["input_ids"].shape[1]  # the 4 virtual tokens were skipped
    first = build_model(make_config(**{"peft.method": method, "peft.pool_at": "first"}), 3)
    load_trainable_state(first.model, trainable_state(classifier.model))
    assert not torch.allclose(_logits(first, batch), _logits(classifier, batch))


def test_corrupt_updates_are_refused_with_the_reason(make_config):
    model = build_model(make_config(), 3).model
    good = trainable_state(model)
    name = next(iter(good))
    cases = {
        "missing": ({k: v for k, v in good.items() if k != name}, "missing 1 tensor"),
        "extra": ({**good, "evil.weight": torch.zeros(2)}, "unexpected tensor"),
        "shape": ({**good, name: torch.zeros(3, 3)}, "has shape (3, 3)"),
        "dtype": ({**good, name: good[name].double()}, "dtype torch.float64"),
        "nan": ({**good, name: good[name].clone().fill_(float("nan"))}, "NaN or Inf"),
        "type": ({**good, name: good[name].numpy()}, "not a tensor"),
    }
    for label, (update, reason) in cases.items():
        with pytest.raises(UpdateError, match=re.escape(reason)):
            load_trainable_state(model, update)
    check_update(good, state_spec(good))  # the untouched state passes


def test_state_distance_is_the_float64_l2_norm_of_the_update_whatever_the_chunks():
    g = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(7, 9, generator=g), "b": torch.randn(3, generator=g).half(), "c": torch.tensor(2.0)}
    reference = {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in state.items()}
    flat = torch.cat([(state[k].double() - reference[k].double()).reshape(-1) for k in state])
    for chunk in (1, 5, 64, 1 << 20):  # chunk boundaries inside and across tensors
        assert state_distance(state, reference, chunk=chunk) == pytest.approx(float(flat.norm()), rel=1e-12)
        assert state_distance(state, chunk=chunk) == pytest.approx(
            float(torch.cat([v.double().reshape(-1) for v in state.values()]).norm()), rel=1e-12)
