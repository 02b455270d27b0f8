"""Tokenisation and batches: a client's split is tokenised once, then padded per batch (dynamic padding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from mfpt.config import ModelConfig, ModelHead
from mfpt.data.sources import LABEL, TEXT, TEXT_PAIR


@dataclass
class Encoded:
    """One client's split, tokenised once: variable-length id lists (padded per batch) and label ids."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def encode(frame: pd.DataFrame, tokenizer: Any, labels: Sequence[str], max_length: int, text_prefix: str = "",
           text_suffix: str = "", lm_head: bool = False) -> Encoded:
    """Tokenise a universal-schema frame once (truncated to `max_length`, no padding yet).

    `text_suffix` follows each text. For the LM head (model.head = lm) it is the cue before the label word: its tokens
    come last and whole, after the text was truncated to make room and without the end-of-text token a tokenizer may
    append (the label word follows the cue). Otherwise it is appended to the text before tokenising."""
    label_ids = {name: i for i, name in enumerate(labels)}
    texts = [text_prefix + t + ("" if lm_head else text_suffix) for t in frame[TEXT].tolist()]
    pairs = frame[TEXT_PAIR].tolist() if TEXT_PAIR in frame.columns else None
    if len(texts) == 0:
        return Encoded([], np.zeros(0, dtype=np.int64))
    cue = tokenizer(text_suffix, add_special_tokens=False)["input_ids"] if lm_head and text_suffix else []
    enc = tokenizer(texts, pairs, truncation=True, max_length=max(max_length - len(cue), 1), padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    if lm_head:
        eos = tokenizer.eos_token_id
        for feature in features:
            if eos is not None and len(feature["input_ids"]) > 1 and feature["input_ids"][-1] == eos:
                feature.update({k: v[:-1] for k, v in feature.items()})
            feature["input_ids"] = feature["input_ids"] + cue
            feature.update({k: feature[k] + [1 if k == "attention_mask" else 0] * len(cue)
                            for k in keys if k != "input_ids"})
    return Encoded(features, np.array([label_ids[v] for v in frame[LABEL]], dtype=np.int64))


def encode_for(model: ModelConfig, frame: pd.DataFrame, tokenizer: Any, labels: Sequence[str], max_length: int) -> Encoded:
    """`encode` with the text prefix, suffix and head of the run's [model] (training, evaluation, predict, audits)."""
    return encode(frame, tokenizer, labels, max_length, model.text_prefix, model.text_suffix,
                  lm_head=model.head == ModelHead.LM)


def batches(data: Encoded, batch_size: int, tokenizer: Any, order: np.ndarray | None = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Dynamically padded batches in `order` (default: as stored)."""
    order = np.arange(len(data)) if order is None else order
    for start in range(0, len(order), batch_size):
        yield collate(data, order[start:start + batch_size], tokenizer)


def collate(data: Encoded, idx: np.ndarray, tokenizer: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The examples at `idx`, padded to the longest; an empty `idx` (a Poisson batch can be) gives no inputs."""
    if len(idx) == 0:
        return {}, torch.zeros(0, dtype=torch.long)
    padded = tokenizer.pad([data.features[i] for i in idx], return_tensors="pt")
    return dict(padded), torch.as_tensor(data.labels[idx])
