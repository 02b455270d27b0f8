"""Model factory: a frozen Hugging Face encoder + one PEFT method as a sequence classifier, and its trainable state.

What travels between clients and server is exactly `trainable_state(model)`: every `requires_grad` tensor by
name. peft's get/set_peft_model_state_dict is not used for exchange because it saves the prompt encoder's
*output* for P-tuning and loads it into the encoder's *input* table, silently changing the model
(stack.md §2.2); it is used only for the final adapter export.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mfpt.compat import ensure_supported_stack, expose_past_key_values
from mfpt.config import ConfigError, ExperimentConfig, PeftConfig, PeftMethod, PoolAt
from mfpt.errors import UserError
from mfpt.specs import METHODS

log = logging.getLogger("mfpt")

# Model types whose classification head reads position 0 through a module we can re-point at <s>/[CLS].
_POSITION0_READERS = {
    "xlm-roberta": "classifier",
    "roberta": "classifier",
    "camembert": "classifier",
    "bert": "bert.pooler",
}
# RoBERTa-family position ids start after padding_idx, so 514 positions leave 512 usable.
_POSITION_OFFSET = {"xlm-roberta": 2, "roberta": 2, "camembert": 2}


class UpdateError(UserError, ValueError):
    """A trainable-state update whose keys, shapes, dtypes or values do not match the model."""


@dataclass
class ClassifierModel:
    """A ready model: the (PEFT-wrapped) classifier, its tokenizer, and the input budget it allows."""

    model: nn.Module
    tokenizer: Any
    max_length: int
    device: torch.device
    method: PeftMethod
    trainable_params: int
    total_params: int
    notes: list[str]


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but no CUDA device is visible; use 'auto' or 'cpu'.")
    return torch.device(name)


def _load_backbone(name: str, num_labels: int) -> tuple[nn.Module, list[str]]:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(f"model.name = {name!r} is a directory without config.json; point it at a checkpoint folder.")
    try:
        config = AutoConfig.from_pretrained(name, num_labels=num_labels)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name, config=config, output_loading_info=True
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set, so only local folders and the local cache are searched"
            if offline
            else "check the hub id, or pass a local checkpoint directory"
        )
        raise ConfigError(f"model.name = {name!r} could not be loaded ({hint}): {err}") from None
    return model, list(info.get("missing_keys", []))


def build_model(cfg: ExperimentConfig, num_labels: int) -> ClassifierModel:
    """Load the encoder as a classifier, wrap it with `cfg.peft.method`, freeze what must not train."""
    from transformers import AutoTokenizer

    if num_labels < 2:
        raise ConfigError(f"The data has {num_labels} label(s); a classifier needs at least 2 (see data.labels).")
    method = cfg.peft.method
    # Seeded so that whatever the checkpoint lacks (the head, maybe a pooler) starts identical in every process.
    torch.manual_seed(cfg.seed)
    model, missing = _load_backbone(cfg.model.name, num_labels)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name)
    notes: list[str] = []

    extra_trainable: list[str] = []
    if any(".pooler." in key for key in missing):
        # A randomly initialised pooler would put a random projection between the encoder's [CLS] state and the
        # head (and, frozen, keep it there). It starts as the identity instead, so the head first sees the
        # encoder's own [CLS] state (tanh keeps it bounded), and it trains with the head and travels with it.
        _identity_pooler(model)
        extra_trainable.append("pooler")
        notes.append("checkpoint has no pooler weights: the pooler starts as the identity and trains with the head")

    max_length, head_notes = fit_inputs(model, cfg)
    notes += head_notes
    spec = METHODS.get(method.value)
    model = apply_method(model, cfg.peft, extra_trainable)
    if cfg.peft.init_std and spec.prompt_table:
        _scale_prompt_init(model, cfg.peft.init_std)
    device = pick_device(cfg.train.device)
    model.to(device)
    trainable, total = count_parameters(model)
    return ClassifierModel(model, tokenizer, max_length, device, method, trainable, total, notes)


def fit_inputs(model: nn.Module, cfg: ExperimentConfig) -> tuple[int, list[str]]:
    """The token budget of one text under `cfg`, and (input prompts) the head re-pointed past the virtual tokens.

    Training and `mfpt predict` both call it on the bare classifier, so a prediction sees what training saw.
    """
    model_type = model.config.model_type
    positions = getattr(model.config, "max_position_embeddings", 512) - _POSITION_OFFSET.get(model_type, 0)
    if not METHODS.get(cfg.peft.method.value).input_prompt:
        return min(cfg.model.max_seq_length, positions), []
    # Virtual tokens are prepended to the embeddings and use up positions (stack.md §0.8).
    max_length = min(cfg.model.max_seq_length, positions - cfg.peft.num_virtual_tokens)
    if max_length < 8:
        raise ConfigError(
            f"peft.num_virtual_tokens = {cfg.peft.num_virtual_tokens} leaves {max_length} of {positions} "
            "positions for text; use fewer virtual tokens."
        )
    if cfg.peft.pool_at != PoolAt.BOS:
        return max_length, []
    _read_after_prompt(model, model_type, cfg.peft.num_virtual_tokens)
    return max_length, ["head reads <s>/[CLS], after the virtual tokens (peft.pool_at = 'bos')"]


def apply_method(model: nn.Module, peft: PeftConfig, extra_trainable: list[str] | None = None) -> nn.Module:
    """Wrap a sequence classifier with the configured PEFT method (or unfreeze everything for `full`)."""
    ensure_supported_stack()  # every model mfpt trains passes here
    peft_config = METHODS.get(peft.method.value).build(peft, list(extra_trainable or []))
    if peft_config is None:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import get_peft_model

    if peft.method == PeftMethod.PREFIX and expose_past_key_values(model):
        log.debug("encoder's `cache` argument exposed to peft as `past_key_values` (transformers >= 5.24)")
    return get_peft_model(model, peft_config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def _identity_pooler(model: nn.Module) -> None:
    for module in model.modules():
        if type(module).__name__.endswith("Pooler") and isinstance(getattr(module, "dense", None), nn.Linear):
            dense = module.dense
            if dense.in_features == dense.out_features:
                with torch.no_grad():
                    dense.weight.copy_(torch.eye(dense.in_features))
                    dense.bias.zero_()


def _scale_prompt_init(model: nn.Module, std: float) -> None:
    """Re-draw the virtual-token tables from N(0, std^2) (peft draws N(0, 1), large next to real keys/values)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("prompt_encoder.") and name.endswith("embedding.weight"):
                param.normal_(0.0, std)


def _read_after_prompt(model: nn.Module, model_type: str, num_virtual_tokens: int) -> None:
    """Make the head read position `num_virtual_tokens` (the real <s>) instead of virtual token 0."""
    path = _POSITION0_READERS.get(model_type)
    if path is None:
        raise ConfigError(
            f"peft.pool_at = 'bos' is not supported for model type {model_type!r} "
            f"(supported: {', '.join(_POSITION0_READERS)}); set peft.pool_at = 'first'."
        )
    head = model.get_submodule(path)

    def skip_virtual_tokens(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        # peft prepends the prompt to the embeddings, so hidden states are [batch, k + seq, hidden].
        return (args[0][:, num_virtual_tokens:],) + tuple(args[1:])

    head.register_forward_pre_hook(skip_virtual_tokens)


# ------------------------------------------------------------------------------------- trainable state


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by name, detached on CPU: exactly what a client sends."""
    return {n: p.detach().to("cpu").clone() for n, p in model.named_parameters() if p.requires_grad}


def state_spec(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes an update must match."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def check_update(
    update: Mapping[str, Any], spec: Mapping[str, tuple[tuple[int, ...], torch.dtype]], origin: str = "update"
) -> None:
    """Refuse an update whose keys, shapes or dtypes differ from `spec`, or that holds NaN/Inf."""
    missing = sorted(set(spec) - set(update))
    extra = sorted(set(update) - set(spec))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]!r}")
        raise UpdateError(f"{origin} refused: {'; '.join(parts)}. Both sides must run the same model and peft config.")
    for name, (shape, dtype) in spec.items():
        tensor = update[name]
        if not isinstance(tensor, torch.Tensor):
            raise UpdateError(f"{origin} refused: {name!r} is a {type(tensor).__name__}, not a tensor.")
        if tuple(tensor.shape) != shape:
            raise UpdateError(f"{origin} refused: {name!r} has shape {tuple(tensor.shape)}, expected {shape}.")
        if tensor.dtype != dtype:
            raise UpdateError(f"{origin} refused: {name!r} has dtype {tensor.dtype}, expected {dtype}.")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UpdateError(f"{origin} refused: {name!r} contains NaN or Inf values.")


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str = "update") -> None:
    """Check `state` against the model's trainable tensors, then copy it in place."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    check_update(state, {n: (tuple(p.shape), p.dtype) for n, p in params.items()}, origin)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device))


def load_adapter(base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Load an exported adapter onto its base model with peft, on every transformers version mfpt supports."""
    from peft import PeftModel

    ensure_supported_stack()  # every exported model mfpt loads passes here
    # Prefix adapters need the encoder's cache argument under its old name (transformers >= 5.24, see compat).
    expose_past_key_values(base_model)
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
    export_adapter(model, tokenizer, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def load_exported(cfg: ExperimentConfig, num_labels: int, adapter_dir: Path, device: torch.device) -> ClassifierModel:
    """A run's exported model, ready for inference, set up exactly as `build_model` set it up for training."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ensure_supported_stack()  # before any weight is read
    if cfg.peft.method == PeftMethod.FULL:  # full fine-tuning exports the whole classifier, not an adapter
        model: nn.Module = AutoModelForSequenceClassification.from_pretrained(str(adapter_dir))
        max_length, notes = fit_inputs(model, cfg)
    else:
        model, _ = _load_backbone(cfg.model.name, num_labels)
        max_length, notes = fit_inputs(model, cfg)  # before peft wraps it: the head hook sits on the bare model
        model = load_adapter(model, adapter_dir)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    trainable, total = count_parameters(model)
    return ClassifierModel(model, tokenizer, max_length, device, cfg.peft.method, trainable, total, notes)
