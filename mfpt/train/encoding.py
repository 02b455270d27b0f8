"""Tokenisation and batches: a client's split is tokenised once, then padded per batch (dynamic padding).

Classification: each example is its text and a label id. Generation (data.task = generation): each example is its
prompt (prefix + text + suffix) followed by its target's tokens and the end-of-text token; the training labels are
those target tokens (every prompt position is -100, which the loss ignores), and the reference text is kept for
scoring generations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from mfpt.config import ExperimentConfig, ModelHead, Task
from mfpt.config.rules import label_words_by_language
from mfpt.data.sources import LABEL, LANG, TARGET, TEXT, TEXT_PAIR

# The label of a position the loss ignores (a prompt token, or padding): torch's cross-entropy ignore_index.
IGNORED = -100


@dataclass
class Encoded:
    """One client's split, tokenised once: variable-length id lists (padded per batch) and label ids."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray
    # Generation only: each example's target tokens (the last tokens of its features) and its reference text.
    targets: list[list[int]] | None = None
    references: list[str] | None = None

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


def encode_generation(frame: pd.DataFrame, tokenizer: Any, max_length: int, max_new_tokens: int, text_prefix: str = "",
                      text_suffix: str = "") -> Encoded:
    """Tokenise a generation frame: each prompt (cut to `max_length`, the suffix kept whole) followed by its target (cut
    to `max_new_tokens`) and the end-of-text token, which teaches the model where an answer stops."""
    prompts = encode(frame.assign(**{LABEL: ""}), tokenizer, [""], max_length, text_prefix, text_suffix, lm_head=True)
    references = frame[TARGET].tolist()
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    targets = [ids[:max_new_tokens] + eos for ids in
               tokenizer([" " + t.strip() for t in references], add_special_tokens=False)["input_ids"]]
    for feature, target in zip(prompts.features, targets):
        feature["input_ids"] = feature["input_ids"] + target
        feature.update({k: feature[k] + [1 if k == "attention_mask" else 0] * len(target)
                        for k in feature if k != "input_ids"})
    return Encoded(prompts.features, np.zeros(len(targets), dtype=np.int64), targets, references)


def encode_for(cfg: ExperimentConfig, frame: pd.DataFrame, tokenizer: Any, labels: Sequence[str], max_length: int) -> Encoded:
    """`encode` (or `encode_generation`) with the task and the text prefix, suffix and head of the run's config
    (training, evaluation, predict, audits)."""
    model = cfg.model
    if cfg.data.task == Task.GENERATION:
        return encode_generation(frame, tokenizer, max_length, model.max_new_tokens, model.text_prefix,
                                 model.text_suffix)
    encoded = encode(frame, tokenizer, labels, max_length, model.text_prefix, model.text_suffix,
                     lm_head=model.head == ModelHead.LM)
    if model.head == ModelHead.LM and model.label_words_by_language:
        # Each text names its language's label words: set k for the k-th listed language, 0 (label_words) otherwise.
        sets = {lang: k + 1 for k, lang in enumerate(label_words_by_language(model.label_words_by_language))}
        languages = frame[LANG].tolist() if LANG in frame.columns else [""] * len(frame)
        for feature, lang in zip(encoded.features, languages):
            feature["verbalizer"] = sets.get(lang, 0)
    return encoded


def batches(data: Encoded, batch_size: int, tokenizer: Any, order: np.ndarray | None = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Dynamically padded batches in `order` (default: as stored)."""
    order = np.arange(len(data)) if order is None else order
    for start in range(0, len(order), batch_size):
        yield collate(data, order[start:start + batch_size], tokenizer)


def collate(data: Encoded, idx: np.ndarray, tokenizer: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The examples at `idx`, padded to the longest; an empty `idx` (a Poisson batch can be) gives no inputs.

    The labels are a label id per example, or (generation) a token label per position: the target's tokens where
    they stand in the padded inputs, IGNORED elsewhere."""
    if len(idx) == 0:
        return {}, torch.zeros(0, dtype=torch.long)
    padded = dict(tokenizer.pad([data.features[i] for i in idx], return_tensors="pt"))
    if data.targets is None:
        return padded, torch.as_tensor(data.labels[idx])
    width = padded["input_ids"].shape[1]
    token_labels = torch.full((len(idx), width), IGNORED, dtype=torch.long)
    for row, i in enumerate(idx):
        target = data.targets[i]
        # The target ends its example: on the right under left padding, before the pads under right padding.
        end = width if tokenizer.padding_side == "left" else len(data.features[i]["input_ids"])
        token_labels[row, end - len(target):end] = torch.tensor(target)
    return padded, token_labels


def prompt_batches(data: Encoded, batch_size: int, tokenizer: Any) -> Iterator[tuple[dict[str, torch.Tensor], list[int]]]:
    """Generation: batches of the prompts alone (each example without its target), left-padded as generation
    needs, with the examples' indices."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            prompts = [{k: v[:len(v) - len(data.targets[i])] for k, v in data.features[i].items()} for i in idx]
            yield dict(tokenizer.pad(prompts, return_tensors="pt")), idx
    finally:
        tokenizer.padding_side = side
