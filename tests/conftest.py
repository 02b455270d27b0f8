"""Shared test fixtures: tiny random encoders built inside the tests and a 4-language fixture dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
TINY_DATA = FIXTURES / "tiny_multilingual.jsonl"


def _tiny_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                           unk_token="<unk>"))
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=vocab)


def _texts() -> list[str]:
    return [json.loads(line)["text"] for line in TINY_DATA.read_text(encoding="utf-8").splitlines()]


def _save_tiny_encoder(out: Path, config_cls, model_cls, **shape) -> Path:
    """Save a 2-layer, hidden-32 random encoder (no pooler weights) with a tokenizer trained on the fixture texts."""
    import torch

    tokenizer = _tiny_tokenizer(_texts())
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, pad_token_id=1, **shape)
    model_cls(config, add_pooling_layer=False).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory) -> Path:
    """A tiny XLM-R checkpoint (RoBERTa classification head, 130 positions)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    return _save_tiny_encoder(tmp_path_factory.mktemp("tiny-xlmr"), XLMRobertaConfig, XLMRobertaModel,
                              max_position_embeddings=130, bos_token_id=0, eos_token_id=2, type_vocab_size=1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint saved WITHOUT pooler weights (like multilingual-e5)."""
    from transformers import BertConfig, BertModel

    return _save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), BertConfig, BertModel, max_position_embeddings=128)


@pytest.fixture
def make_config(tmp_path, tiny_xlmr):
    """Build a validated ExperimentConfig on the tiny model and fixture data; keyword overrides use dotted keys."""
    from mfpt.config import load_config

    def make(**overrides: Any):
        base = {"name": "test", "output_dir": str(tmp_path / "run"), "model.name": str(tiny_xlmr),
                "model.max_seq_length": 32, "data.source": "files", "data.path": str(TINY_DATA),
                "peft.num_virtual_tokens": 4, "federation.rounds": 2, "train.batch_size": 8, "train.lr": 0.01,
                "train.threads": 1, "train.device": "cpu"}
        base.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_config(None, base)

    return make
