"""Derived seeds: every random draw of a run comes from the experiment seed and where it happens, never from
Python's salted `hash`, so a run is the same on every process and machine."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from (experiment seed, round, client, ...), stable across processes and machines."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def derive_data_seed(seed: int, lang: str, split: str) -> int:
    """A per-(language, split) sampling seed that does not depend on Python's salted str hash."""
    digest = hashlib.sha256(f"{seed}/{lang}/{split}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
