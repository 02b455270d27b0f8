"""Model factory: a Hugging Face encoder loaded as a sequence classifier and wrapped with one PEFT method.

The method's peft config comes from its spec (mfpt.config.specs); what then trains is exactly the tensors
with `requires_grad` (mfpt.model.state). Input-prompt methods use up positions and move position 0, so
`fit_inputs` sets the token budget and, where needed, re-points the head at the real <s>/[CLS].
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from mfpt.config import ConfigError, ExperimentConfig, ModelHead, PeftConfig, PeftMethod, PoolAt, Quantization, Task
from mfpt.config.rules import label_words_by_language
from mfpt.config.specs import METHODS
from mfpt.core.hub import HubUnreachableError, ensure_hub_reachable, is_unreachable, unreachable_message
from mfpt.model.compat import ensure_supported_stack, expose_past_key_values, expose_past_key_values_on
from mfpt.model.precision import base_dtype

log = logging.getLogger("mfpt")
# How to fetch a model on a machine with the network, for a site without it.
MODEL_ELSEWHERE = ("download it where the network is (`hf download {name} --local-dir DIR`) and bring DIR here as "
                   "model.name")


# Model types whose classification head reads position 0 through a module we can re-point at <s>/[CLS].
_POSITION0_READERS = {
    "xlm-roberta": "classifier",
    "roberta": "classifier",
    "camembert": "classifier",
    "bert": "bert.pooler",
}


# RoBERTa-family position ids start after padding_idx, so 514 positions leave 512 usable.
_POSITION_OFFSET = {"xlm-roberta": 2, "roberta": 2, "camembert": 2}

# Decoder language models whose sequence classifier (transformers' *ForSequenceClassification) reads the last real
# token. Each is tested on a tiny random model with prompt, prefix and LoRA (tests/test_decoders.py).
DECODER_TYPES = ("qwen2", "qwen3", "llama", "gemma", "gemma2", "gemma3_text", "bloom")


def is_decoder(model: nn.Module) -> bool:
    """Whether `model` is one of the decoder classifiers mfpt supports (DECODER_TYPES)."""
    return getattr(model.config, "model_type", "") in DECODER_TYPES


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


def _load_backbone(name: str, num_labels: int, lm_head: bool = False, dtype: torch.dtype = torch.float32,
                   quantization: dict[str, Any] | None = None) -> tuple[nn.Module, list[str]]:
    """The checkpoint as a sequence classifier with a new head, or (lm_head) as a causal LM with its own head, its
    weights in `dtype` (model.dtype; fp32 trainable tensors are made by `keep_trainable_fp32`), or quantised
    (`quantization`: from_pretrained's arguments from `quantization_arguments`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(f"model.name = {name!r} is a directory without config.json; point it at a checkpoint folder.")
    if not local.exists():  # a hub id: found unreachable in seconds, not after half a minute of retries
        ensure_hub_reachable(f"model.name = {name!r} (weights and tokenizer)", "model.name = its checkpoint folder",
                             MODEL_ELSEWHERE.format(name=name))
    try:
        config = AutoConfig.from_pretrained(name, num_labels=num_labels)
        if lm_head and config.model_type not in DECODER_TYPES:
            raise ConfigError(f"model.head = 'lm' reads a decoder's own language-model head, but model.name = {name!r} "
                              f"is a {config.model_type!r} model; use a decoder ({', '.join(DECODER_TYPES)}) or "
                              "model.head = 'classifier'.")
        auto = AutoModelForCausalLM if lm_head else AutoModelForSequenceClassification
        # transformers reports every weight the checkpoint lacks (an encoder checkpoint always lacks the new task head,
        # and some lack the pooler: expected here) and which layers a tensor-parallel plan left unsharded (no such
        # plan runs here). mfpt names a missing weight outside the head itself, below.
        with quiet_transformers():
            model, info = auto.from_pretrained(name, config=config, output_loading_info=True, dtype=dtype,
                                               **(quantization or {}))
    except ConfigError:
        raise
    except Exception as err:
        if is_unreachable(err):
            raise HubUnreachableError(unreachable_message(f"model.name = {name!r}", "model.name = its checkpoint folder",
                                                          str(err).splitlines()[0], MODEL_ELSEWHERE.format(name=name))) from None
        if not isinstance(err, OSError):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set, so only local folders and the local cache are searched"
            if offline
            else "check the hub id, or pass a local checkpoint directory"
        )
        raise ConfigError(f"model.name = {name!r} could not be loaded ({hint}): {err}") from None
    missing = list(info.get("missing_keys", []))
    unexpected = [key for key in missing if not _is_head_or_pooler(key)]
    if unexpected:
        log.warning("model.name = %r lacks %d weight(s) outside the classification head, which start random: %s%s",
                    name, len(unexpected), ", ".join(unexpected[:3]), " ..." if len(unexpected) > 3 else "")
    return model, missing


def load_base(cfg: ExperimentConfig, num_labels: int, device: torch.device) -> tuple[nn.Module, list[str]]:
    """The checkpoint as [model] asks, for training and for loading an export alike: a classifier or a causal LM
    (model.head), in model.dtype or quantised (model.quantization) for `device`; and the weights it lacked."""
    return _load_backbone(cfg.model.name, num_labels, cfg.model.head == ModelHead.LM,
                          base_dtype(cfg.model.dtype.value, cfg.train.precision.value, device),
                          quantization_arguments(cfg.model.quantization.value, device))


def place_on(model: nn.Module, cfg: ExperimentConfig, device: torch.device) -> None:
    """Move the model to `device`; a quantised model was placed on its GPU as it loaded and cannot be moved."""
    if cfg.model.quantization == Quantization.NONE:
        model.to(device)


# Weights a classifier built from an encoder checkpoint lacks by design: the new task head and, in some checkpoints
# (multilingual-e5), the pooler; a base decoder checkpoint loaded as a causal LM, its (tied) LM head.
_HEAD_PARTS = ("classifier.", "pooler.", "score.", "lm_head.")


def _is_head_or_pooler(key: str) -> bool:
    return any(part in f"{key}." or key.startswith(part) for part in _HEAD_PARTS)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' loading reports, its "Loading weights" progress bar and the deprecation notices transformers
    gives peft off for the duration (none says anything a user can act on), then everything restored."""
    from transformers.utils import logging as transformers_logging

    logger = logging.getLogger("transformers")
    level, bar = logger.level, transformers_logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # peft reads `is_gradient_checkpointing`, which transformers 5 deprecates in favour of a new name.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
        if bar:
            transformers_logging.enable_progress_bar()


def build_model(cfg: ExperimentConfig, num_labels: int) -> ClassifierModel:
    """Load the encoder as a classifier, wrap it with `cfg.peft.method`, freeze what must not train."""
    from transformers import AutoTokenizer

    generation = cfg.data.task == Task.GENERATION
    if num_labels < 2 and not generation:
        raise ConfigError(f"The data has {num_labels} label(s); a classifier needs at least 2 (see data.labels).")
    method = cfg.peft.method
    lm_head = cfg.model.head == ModelHead.LM
    device = pick_device(cfg.train.device)
    # Seeded so that whatever the checkpoint lacks (the head, maybe a pooler) starts identical in every process.
    torch.manual_seed(cfg.seed)
    model, missing = load_base(cfg, num_labels, device)
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
    if cfg.model.quantization != Quantization.NONE:
        from peft import prepare_model_for_kbit_training

        # QLoRA's preparation: norms and the head in fp32, inputs that carry gradients through the frozen base.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
        notes.append(f"model.quantization: the frozen base is {cfg.model.quantization.value} (bitsandbytes)")
    elif cfg.train.gradient_checkpointing:
        notes.append(enable_gradient_checkpointing(model))
    spec = METHODS.get(method.value)
    if generation and model.config.model_type == "bloom" and spec.prompt_table:
        # Measured on transformers 5.25 / peft 0.21: BLOOM's ALiBi mask is built for the text's positions without
        # the virtual tokens, so generate() fails on the first step (training and scoring by loss work).
        raise ConfigError(f"model.name = {cfg.model.name!r} is a BLOOM model, which cannot generate under "
                          f"peft.method = {method.value!r} (its ALiBi mask leaves out the virtual tokens); use "
                          "peft.method = 'lora' or 'full' for data.task = 'generation'.")
    if is_decoder(model):
        notes += prepare_decoder(model, tokenizer, spec.input_prompt, method == PeftMethod.PREFIX, lm_head)
    model = apply_method(model, cfg.peft, extra_trainable, causal_lm=lm_head)
    if cfg.peft.init_std and spec.prompt_table:
        _scale_prompt_init(model, cfg.peft.init_std)
    if lm_head and not generation:
        model, word_notes = verbalized(model, tokenizer, cfg, num_labels)
        notes += word_notes
    if note := keep_trainable_fp32(model):
        notes.append(note)
    place_on(model, cfg, device)
    trainable, total = count_parameters(model)
    return ClassifierModel(model, tokenizer, max_length, device, method, trainable, total, notes)


def fit_inputs(model: nn.Module, cfg: ExperimentConfig) -> tuple[int, list[str]]:
    """The token budget of one text under `cfg`, and (input prompts) the head re-pointed past the virtual tokens.

    Training and `mfpt predict` both call it on the bare classifier, so a prediction sees what training saw.
    """
    model_type = model.config.model_type
    positions = getattr(model.config, "max_position_embeddings", 512) - _POSITION_OFFSET.get(model_type, 0)
    if is_decoder(model):  # the head reads the last real token, after any virtual tokens (prepare_decoder)
        budget = cfg.model.max_seq_length if not METHODS.get(cfg.peft.method.value).input_prompt else min(
            cfg.model.max_seq_length, positions - cfg.peft.num_virtual_tokens)
        return min(budget, positions), []
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


def quantization_arguments(quantization: str, device: torch.device) -> dict[str, Any] | None:
    """from_pretrained's arguments for model.quantization (QLoRA's NF4 settings for 4bit), or None for none; a CPU
    or a missing bitsandbytes is refused in one line."""
    if quantization == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(f"model.quantization = {quantization!r} runs on a CUDA GPU only (bitsandbytes), but "
                          f"train.device resolves to {device.type} here; set model.quantization = 'none'.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"model.quantization = {quantization!r} needs bitsandbytes: pip install "
                          "'mfpt[quantization]' (or bitsandbytes), or set model.quantization = 'none'.") from None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def keep_trainable_fp32(model: nn.Module) -> str | None:
    """A bf16 or quantised base (model.dtype, model.quantization) trains fp32 tensors: every trainable tensor is cast
    up, so the optimiser, the exchanged state and the checkpoints are fp32 as under a float32 base. The note says
    what the frozen base is held in; None for a float32 base, where nothing changes."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    held_in = sorted({str(p.dtype).replace("torch.", "") for p in frozen} - {"float32"})
    if not held_in:
        return None
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return (f"the frozen base ({sum(p.numel() for p in frozen):,} weights) is held in {', '.join(held_in)}; the "
            "trainable tensors are fp32")


def enable_gradient_checkpointing(model: nn.Module) -> str:
    """train.gradient_checkpointing: transformers' own, non-reentrant (it needs no input that requires grad, so it
    works when the embeddings are frozen under every peft method); the note says so."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing = true, but {type(model).__name__} does not support it in "
                          "transformers; set it to false.")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # a cache is for generation; it cannot be kept under checkpointing
    return "gradient checkpointing: activations are recomputed in the backward pass"


def apply_method(model: nn.Module, peft: PeftConfig, extra_trainable: list[str] | None = None,
                 causal_lm: bool = False) -> nn.Module:
    """Wrap a sequence classifier (or, `causal_lm`, a decoder's LM) with the configured PEFT method (or unfreeze
    everything for `full`)."""
    ensure_supported_stack()  # every model mfpt trains passes here
    peft_config = METHODS.get(peft.method.value).build(peft, list(extra_trainable or []))
    if peft_config is not None and causal_lm:
        from peft import TaskType

        peft_config.task_type = TaskType.CAUSAL_LM  # no head to add: the LM's own head reads the label words
    if peft_config is None:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import get_peft_model

    if peft.method == PeftMethod.PREFIX and expose_past_key_values(model):
        log.debug("encoder's `cache` argument exposed to peft as `past_key_values` (transformers >= 5.24)")
    with quiet_transformers():
        return get_peft_model(model, peft_config)


def verbalized(model: nn.Module, tokenizer: Any, cfg: ExperimentConfig, num_labels: int) -> tuple[nn.Module, list[str]]:
    """model.head = lm: the (peft-wrapped) causal LM read as a classifier over the label words; the notes say how."""
    from mfpt.model.verbalizer import VerbalizedClassifier, label_token_ids

    words = list(cfg.model.label_words or cfg.data.labels)
    if len(words) != num_labels:
        raise ConfigError(f"model.head = 'lm' has {len(words)} label words ({words}) for {num_labels} labels in the "
                          "data; list data.labels (and model.label_words) as the data has them.")
    ids, notes = label_token_ids(tokenizer, words, cfg.model.text_suffix)
    notes.append(f"LM head: labels ranked by the likelihood of {', '.join(map(repr, words))} after the text")
    verbalizers = [ids]
    for lang, own in label_words_by_language(cfg.model.label_words_by_language).items():
        own_ids, own_notes = label_token_ids(tokenizer, own, cfg.model.text_suffix)
        verbalizers.append(own_ids)
        notes += [f"{lang}: {note}" for note in own_notes]
        notes.append(f"LM head, {lang}: {', '.join(map(repr, own))}")
    return VerbalizedClassifier(model, verbalizers), notes


def prepare_decoder(model: nn.Module, tokenizer: Any, input_prompt: bool, prefix: bool, lm_head: bool = False) -> list[str]:
    """Make a decoder classifier read each text's last real token under every peft method; the notes say how.

    - a pad token where the tokenizer has none (its end-of-text token), known to the model, which finds the last
      real token by it;
    - input prompts (prompt, ptuning): peft passes embeddings, so the model reads the last position: texts are
      padded on the left, and position ids follow the attention mask (a padded text is read as it is alone);
    - prefix: peft is shown the `past_key_values` argument on the classifier itself (transformers 5.24 calls it
      `cache`), so the classifier, not its backbone, takes the prefix and pools as usual; right padding;
    - lm_head (model.head = lm): every method pads on the left, as the label words are read at the last position,
      and position ids follow the mask (after a prefix's virtual positions).
    """
    notes = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"model.name = {model.name_or_path!r}: its tokenizer has neither a pad nor an "
                              "end-of-text token, so padded texts cannot be told apart; add a pad token to it.")
        tokenizer.pad_token = tokenizer.eos_token
        notes.append("tokenizer has no pad token: its end-of-text token pads")
    model.config.pad_token_id = tokenizer.pad_token_id
    left = input_prompt or lm_head
    tokenizer.padding_side = "left" if left else "right"
    if left:
        backbone = getattr(model, model.base_model_prefix)
        backbone.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
        # transformers warns on every such model that it cannot find pads in embeddings: left padding is the answer.
        model_log = logging.getLogger(type(model).__module__)
        if _LAST_POSITION_NOTICE not in model_log.filters:
            model_log.addFilter(_LAST_POSITION_NOTICE)
        notes.append("decoder: the head reads the last token; texts padded on the left, positions from the mask")
    else:
        notes.append("decoder: the head reads the last real token")
    if prefix and expose_past_key_values_on(model):
        log.debug("decoder classifier's `cache` argument exposed to peft as `past_key_values`")
    return notes


class _DropLastPositionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "will not detect padding tokens in `inputs_embeds`" not in record.getMessage()


_LAST_POSITION_NOTICE = _DropLastPositionNotice()


def _positions_from_mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict]:
    # peft puts the virtual tokens first and marks them in the mask: [v v v v pad pad t t] gets positions
    # [0 1 2 3 3 3 4 5], those of [v v v v t t], so a padded text is read exactly as it is alone. A prefix's virtual
    # tokens are in the mask but not in the input (they come as past keys and values): the text's positions are the
    # mask's last ones.
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is None and mask is not None and mask.dim() == 2:
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        length = inputs.shape[1] if inputs is not None else mask.shape[1]
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
    return args, kwargs


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts. The total is the model's own size: peft keeps a frozen original of every
    module it trains a copy of (`modules_to_save`, here the head), which is not part of the model and not counted."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for name, p in model.named_parameters() if ".original_module." not in name)
    return trainable, total


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
