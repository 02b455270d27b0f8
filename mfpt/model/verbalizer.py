"""model.head = "lm": a decoder's own language-model head read as a classifier over label words (verbalisers).

Each label is a word (model.label_words, else the label's name). A text is followed by model.text_suffix (the cue,
e.g. "\\nTopic:"), and the model's next-token logits at the last position, taken at each label word's first token,
are the label scores: ranking them is rank classification by the label words' likelihood, and cross-entropy over
them trains the prompt to make the right word the likeliest of the label words. Everything downstream (the training
loop, evaluation, DP, federation, predict) sees a classifier's `logits` of shape [batch, labels], as with a head.

Texts are padded on the left, so the last position is every text's last real token; position ids follow the
attention mask (mfpt.model.factory.prepare_decoder), so a padded text is read exactly as it is alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from mfpt.config import ConfigError


def label_token_ids(tokenizer: Any, words: Sequence[str], cue: str) -> tuple[list[int], list[str]]:
    """Each label word's first token as it follows `cue` (after a space), and notes on words cut to that token.

    The word is tokenised in context, so a tokenizer that marks word starts (SentencePiece's "▁", byte-level BPE's
    "Ġ") gives the token the model would predict after the cue, not the one at the start of a text."""
    context = cue or ":"
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids, notes = [], []
    for word in words:
        full = tokenizer(context + " " + word.strip(), add_special_tokens=False)["input_ids"]
        tokens = full[len(base):] if full[:len(base)] == base else tokenizer(" " + word.strip(),
                                                                                add_special_tokens=False)["input_ids"]
        # A tokenizer may give the word boundary a token of its own (SentencePiece's lone "▁"): the word starts at
        # its first token that spells something.
        while len(tokens) > 1 and not tokenizer.decode([tokens[0]]).strip():
            tokens = tokens[1:]
        if not tokens:
            raise ConfigError(f"model.label_words: {word!r} gives no token after the text; choose another word.")
        if len(tokens) > 1:
            notes.append(f"label word {word!r} is {len(tokens)} tokens: it is scored by its first "
                         f"({tokenizer.convert_ids_to_tokens(tokens[0])!r})")
        ids.append(tokens[0])
    clashes = {i for i in ids if ids.count(i) > 1}
    if clashes:
        same = [w for w, i in zip(words, ids) if i in clashes]
        raise ConfigError(f"model.label_words {same} start with the same token "
                          f"({tokenizer.convert_ids_to_tokens(sorted(clashes)[0])!r}), so the LM head cannot tell "
                          "them apart; choose words that begin differently (model.label_words).")
    return ids, notes


class VerbalizedClassifier(nn.Module):
    """A causal LM whose next-token logits at the last position, at the label words' tokens, are class logits."""

    def __init__(self, lm: nn.Module, label_ids: Sequence[int]) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.register_buffer("label_ids", torch.tensor(list(label_ids), dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        # Only the last position's logits are needed: the LM head runs on one position, not the whole text.
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **kwargs)
        return SequenceClassifierOutput(logits=out.logits[:, -1, :].index_select(-1, self.label_ids))

    def save_pretrained(self, path: str, **kwargs: Any) -> None:
        """The LM's own export (peft's adapter, or the whole model under full fine-tuning)."""
        self.lm.save_pretrained(path, **kwargs)
