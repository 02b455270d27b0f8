"""model.head = "lm": a decoder's own language-model head read as a classifier over label words (verbalisers).

Each label is a word (model.label_words, else the label's name). A text is followed by model.text_suffix (the cue,
e.g. "\\nTopic:"), and each label's score is the log-likelihood of its word after it: rank classification.
Cross-entropy over the scores trains the prompt to make the right word the likeliest of the label words.
- When every word is one token, one forward pass scores them all: the next-token logits at the last position, at
  the words' tokens (equal to their log-likelihoods up to a per-text constant, which cross-entropy ignores).
- Otherwise each label's word is appended to the text and its tokens' log-probabilities summed: one forward pass
  per label.
Everything downstream (the training loop, evaluation, DP, federation, predict) sees a classifier's `logits` of shape
[batch, labels], as with a head.

A language may have label words of its own (model.label_words_by_language): each set of words is a verbaliser, set 0
the default (model.label_words) and set k the k-th listed language's, and each text carries the index of its
language's set as the `verbalizer` input (mfpt.train.encoding), so a batch may mix languages.

Texts are padded on the left, so the last position is every text's last real token; position ids follow the
attention mask (mfpt.model.factory.prepare_decoder), so a padded text is read exactly as it is alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from mfpt.config import ConfigError


def label_token_ids(tokenizer: Any, words: Sequence[str], cue: str) -> tuple[list[list[int]], list[str]]:
    """Each label word's tokens as they follow `cue` (after a space), and a note when a word is several tokens.

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
        ids.append(list(tokens))
    same = [w for w, t in zip(words, ids) if ids.count(t) > 1]
    if same:
        raise ConfigError(f"model.label_words {same} are the same tokens to this tokenizer, so the LM head cannot "
                          "tell them apart; choose different words (model.label_words).")
    longest = max(len(t) for t in ids)
    if longest > 1:
        notes.append(f"label words of up to {longest} tokens: each label is scored by its whole word's "
                     f"log-likelihood, one forward pass per label ({len(ids)})")
    return ids, notes


class VerbalizedClassifier(nn.Module):
    """A causal LM whose label words' log-likelihoods after the (left-padded) text are class logits; one set of label
    words per verbaliser (set 0 unless a text's `verbalizer` input names another)."""

    def __init__(self, lm: nn.Module, label_tokens: Sequence[Sequence[Sequence[int]]]) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.verbalizers = [[list(t) for t in words] for words in label_tokens]
        self.single_token = all(len(t) == 1 for words in self.verbalizers for t in words)
        # [verbalisers, labels]: each set's first token of each label word.
        self.register_buffer("label_ids", torch.tensor([[t[0] for t in words] for words in self.verbalizers],
                                                       dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                verbalizer: torch.Tensor | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        sets = verbalizer if verbalizer is not None else torch.zeros(input_ids.shape[0], dtype=torch.long,
                                                                        device=input_ids.device)
        if self.single_token:
            # Only the last position's logits are needed: the LM head runs on one position, not the whole text.
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **kwargs)
            return SequenceClassifierOutput(logits=out.logits[:, -1, :].gather(-1, self.label_ids[sets]))
        # Each verbaliser's texts are scored with its own words, then put back in the batch's order.
        rows, scores = [], []
        for index in sets.unique().tolist():
            chosen = (sets == index).nonzero().squeeze(-1)
            mask = attention_mask[chosen] if attention_mask is not None else None
            rows.append(chosen)
            scores.append(torch.stack([self._word_log_likelihood(input_ids[chosen], mask, tokens, kwargs)
                                       for tokens in self.verbalizers[index]], -1))
        return SequenceClassifierOutput(logits=torch.cat(scores)[torch.cat(rows).argsort()])

    def _word_log_likelihood(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tokens: list[int],
                             kwargs: dict[str, Any]) -> torch.Tensor:
        """Sum over the word's tokens of log p(token | text, cue, the word's earlier tokens), per text."""
        batch = input_ids.shape[0]
        word = torch.tensor(tokens, dtype=input_ids.dtype, device=input_ids.device).expand(batch, -1)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        # Positions t predict token t + 1: the word's m tokens are predicted by the m positions before the last.
        out = self.lm(input_ids=torch.cat([input_ids, word], 1), attention_mask=torch.cat([mask, torch.ones_like(word)], 1),
                      logits_to_keep=len(tokens) + 1, **kwargs)
        log_probs = torch.log_softmax(out.logits[:, :-1, :].float(), -1)
        return log_probs.gather(-1, word.unsqueeze(-1)).squeeze(-1).sum(-1)

    def save_pretrained(self, path: str, **kwargs: Any) -> None:
        """The LM's own export (peft's adapter, or the whole model under full fine-tuning)."""
        self.lm.save_pretrained(path, **kwargs)
