"""A run's final model on disk: exported in peft's format (`adapter/`), and loaded back for inference."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mfpt.config import ExperimentConfig, ModelHead, PeftMethod, Task
from mfpt.config.specs import METHODS
from mfpt.core.files import DIR_MODE, FILE_MODE
from mfpt.model.compat import ensure_supported_stack, expose_past_key_values
from mfpt.model.factory import (
    ClassifierModel,
    count_parameters,
    fit_inputs,
    is_decoder,
    load_base,
    place_on,
    prepare_decoder,
    quiet_transformers,
    verbalized,
)


def load_adapter(base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Load an exported adapter onto its base model with peft, on every transformers version mfpt supports."""
    from peft import PeftModel

    ensure_supported_stack()  # every exported model mfpt loads passes here
    # Prefix adapters need the encoder's cache argument under its old name (transformers >= 5.24, see compat).
    expose_past_key_values(base_model)
    with quiet_transformers():
        return PeftModel.from_pretrained(base_model, str(adapter_dir))


def export_adapter(model: nn.Module, tokenizer: Any, out_dir: Path) -> Path:
    """Save a final export that `peft` (or `transformers`, for full fine-tuning) can load."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def export_atomically(model: nn.Module, tokenizer: Any, target: Path) -> Path:
    """Export the final adapter into a temp folder, then swap it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=target.parent))
    os.chmod(tmp, DIR_MODE)  # mkdtemp makes it 0700; the run's other folders follow the umask
    export_adapter(model, tokenizer, tmp)
    for written in tmp.rglob("*"):  # some writers (safetensors) create their files 0600 whatever the umask
        os.chmod(written, DIR_MODE if written.is_dir() else FILE_MODE)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def load_exported(cfg: ExperimentConfig, num_labels: int, adapter_dir: Path, device: torch.device) -> ClassifierModel:
    """A run's exported model, ready for inference, set up exactly as `build_model` set it up for training."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    ensure_supported_stack()  # before any weight is read
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    input_prompt = METHODS.get(cfg.peft.method.value).input_prompt
    lm_head = cfg.model.head == ModelHead.LM
    if cfg.peft.method == PeftMethod.FULL:  # full fine-tuning exports the whole classifier, not an adapter
        auto = AutoModelForCausalLM if lm_head else AutoModelForSequenceClassification
        with quiet_transformers():
            model: nn.Module = auto.from_pretrained(str(adapter_dir))
        max_length, notes = fit_inputs(model, cfg)
        if is_decoder(model):
            notes += prepare_decoder(model, tokenizer, input_prompt, prefix=False, lm_head=lm_head)
    else:
        model, _ = load_base(cfg, num_labels, device)
        max_length, notes = fit_inputs(model, cfg)  # before peft wraps it: the head hook sits on the bare model
        if is_decoder(model):  # as build_model did: pad token, padding side, position ids, the prefix argument
            notes += prepare_decoder(model, tokenizer, input_prompt, cfg.peft.method == PeftMethod.PREFIX, lm_head)
        model = load_adapter(model, adapter_dir)
    if lm_head and cfg.data.task == Task.CLASSIFICATION:
        model, word_notes = verbalized(model, tokenizer, cfg, num_labels)
        notes += word_notes
    place_on(model, cfg, device)
    model.eval()
    trainable, total = count_parameters(model)
    return ClassifierModel(model, tokenizer, max_length, device, cfg.peft.method, trainable, total, notes)
