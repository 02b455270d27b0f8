"""Per-round checkpoints: the global trainable state, the server optimiser's state and every language's personal
state of one round in one safetensors file, written atomically; and finding the newest intact one to resume from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from mfpt.core import files
from mfpt.core.errors import UserError
from mfpt.results.schema import CHECKPOINTS_DIR

log = logging.getLogger("mfpt")

class ResumeError(UserError, ValueError):
    """A run directory that cannot be resumed; the message says why and what to do."""


@dataclass
class Checkpoint:
    round: int
    state: dict[str, torch.Tensor]
    server_state: dict[str, np.ndarray]
    personal: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # language -> its personalised state


def save_checkpoint(path: Path, round_: int, state: Mapping[str, torch.Tensor], server_state: Mapping[str, np.ndarray],
                    personal: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> Path:
    """Atomically write one round's global trainable state (+ server-optimiser state, + every language's
    personalised state) as one safetensors file, so they are always of the same round."""
    from safetensors.torch import save_file

    tensors = {f"state/{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    tensors.update({f"server/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in server_state.items()})
    for lang, lang_state in (personal or {}).items():
        tensors.update({f"personal/{lang}/{k}": v.detach().cpu().contiguous() for k, v in lang_state.items()})
    return files.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"round": str(round_)}))


class DamagedCheckpointError(ResumeError):
    """A checkpoint file that cannot be read back whole (truncated, overwritten, not safetensors, NaN/Inf)."""


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; a file that is not whole raises DamagedCheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            round_ = int((handle.metadata() or {})["round"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise DamagedCheckpointError(f"checkpoint {str(path)!r} is damaged ({type(err).__name__}: {err})") from None
    # safetensors keeps no checksum: bytes overwritten inside a tensor read back as numbers, often NaN or Inf.
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise DamagedCheckpointError(f"checkpoint {str(path)!r} is damaged: {broken[0]!r} holds NaN or Inf")
    state = {k[len("state/"):]: v for k, v in tensors.items() if k.startswith("state/")}
    server = {k[len("server/"):]: v.numpy() for k, v in tensors.items() if k.startswith("server/")}
    personal: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("personal/"):
            _, lang, name = key.split("/", 2)
            personal.setdefault(lang, {})[name] = value
    return Checkpoint(round_, state, server, personal)


def last_intact_checkpoint(out_dir: Path, completed: int) -> Checkpoint | None:
    """The newest readable checkpoint of rounds `completed`..0, warning about each damaged one passed over.

    None when `completed` is 0 and no round-0 checkpoint exists (nothing ran yet); ResumeError when rounds were
    completed but none of their checkpoints can be read.
    """
    missing: list[int] = []  # told once: keep_checkpoints deletes all but the newest
    for round_ in range(completed, -1, -1):
        path = checkpoint_path(out_dir, round_)
        if round_ == 0 and not path.exists():  # only transfer's stage 1 checkpoints round 0
            break
        try:
            checkpoint = load_checkpoint(path) if path.exists() else None
        except DamagedCheckpointError as err:
            log.warning("%s; passing over it", err)
            continue
        if checkpoint is None:
            missing.append(round_)
            continue
        if missing:
            _warn_missing(missing)
            missing = []
        if checkpoint.round != round_:
            log.warning("checkpoint %r says round %d; passing over it", str(path), checkpoint.round)
        else:
            if round_ < completed:
                log.warning("resuming from round %d, the last intact checkpoint (%s); rounds %d-%d run again",
                            round_, path.name, round_ + 1, completed)
            return checkpoint
    if missing:
        _warn_missing(missing)
    if completed == 0:
        return None
    raise ResumeError(f"No intact checkpoint in {str(out_dir / CHECKPOINTS_DIR)!r} (rounds 1-{completed} are damaged or "
                      "missing): this run cannot be resumed; start it again with --out NEW_FOLDER.")


def _warn_missing(rounds: list[int]) -> None:
    """One warning for the missing checkpoints of `rounds` (descending, as the resume search meets them), as
    '7-9, 3' for [9, 8, 7, 3]."""
    runs: list[list[int]] = []
    for r in rounds:
        if runs and runs[-1][-1] == r + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    spans = ", ".join(f"{run[-1]}-{run[0]}" if len(run) > 1 else str(run[0]) for run in runs)
    log.warning("the checkpoints of rounds %s are missing (deleted, or keep_checkpoints kept fewer)", spans)


def checkpoint_path(out_dir: Path, round_: int) -> Path:
    return out_dir / CHECKPOINTS_DIR / f"round-{round_:04d}.safetensors"


def prune_checkpoints(out_dir: Path, keep: set[int]) -> None:
    """Delete the round checkpoints of out_dir whose round is not in `keep` (keep_checkpoints)."""
    for path in (out_dir / CHECKPOINTS_DIR).glob("round-*.safetensors"):
        number = path.stem.removeprefix("round-")
        if number.isdigit() and int(number) not in keep:
            path.unlink(missing_ok=True)
