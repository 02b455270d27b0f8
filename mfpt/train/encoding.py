"""Tokenisation and batches: a client's split is tokenised once, then padded per batch (dynamic padding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from mfpt.data.sources import LABEL, TEXT, TEXT_PAIR


@dataclass
class Encoded:
    """One client's split, tokenised once: variable-length id lists (padded per batch) and label ids."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def encode(frame: pd.DataFrame, tokenizer: Any, labels: Sequence[str], max_length: int, text_prefix: str = "") -> Encoded:
    """Tokenise a universal-schema frame once (truncated to `max_length`, no padding yet)."""
    label_ids = {name: i for i, name in enumerate(labels)}
    texts = [text_prefix + t for t in frame[TEXT].tolist()]
    pairs = frame[TEXT_PAIR].tolist() if TEXT_PAIR in frame.columns else None
    if len(texts) == 0:
        return Encoded([], np.zeros(0, dtype=np.int64))
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    return Encoded(features, np.array([label_ids[v] for v in frame[LABEL]], dtype=np.int64))


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
