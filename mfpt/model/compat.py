"""Compatibility of the installed libraries: a start-up guard on the transformers/peft pair, and one adapter.

The supported ranges are not written here a second time: they are mfpt's own requirements, read from the
installed package's metadata (that is, from pyproject.toml), so the guard and `pip install .` always agree.
"""

from __future__ import annotations

import functools
import inspect
import os
from importlib import metadata
from typing import TYPE_CHECKING, Mapping

from mfpt.config import ConfigError

if TYPE_CHECKING:  # annotations only: the start-up check must not pay for importing torch
    from torch import nn

# The pair that must move together: peft inspects transformers' forward signatures (see `expose_past_key_values`).
GUARDED = ("transformers", "peft")
SKIP_ENV = "MFPT_SKIP_VERSION_CHECK"


class UnsupportedStackError(ConfigError):
    """The installed transformers/peft pair is outside the ranges mfpt has been tested with."""


def supported_ranges(distribution: str = "mfpt") -> dict[str, str]:
    """The version specifiers mfpt's installed metadata declares for each guarded package ({} if not installed)."""
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return {}
    ranges: dict[str, str] = {}
    for line in requires:
        req = Requirement(line)
        if req.name.lower() in GUARDED and req.marker is None:
            ranges[req.name.lower()] = str(req.specifier)
    return ranges


def installed_versions() -> dict[str, str]:
    """The installed version of each guarded package ('missing' when absent)."""
    versions = {}
    for name in GUARDED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def stack_problem(versions: Mapping[str, str], ranges: Mapping[str, str]) -> str | None:
    """One line naming the installed pair and the fix when a version lies outside its range, else None."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    outside = []
    for name, spec in ranges.items():
        installed = versions.get(name, "missing")
        try:
            ok = installed != "missing" and Version(installed) in SpecifierSet(spec, prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            outside.append(f"{name}{spec}")
    if not outside:
        return None
    pair = ", ".join(f"{name} {versions.get(name, 'missing')}" for name in ranges)
    wanted = " ".join(f"'{name}{spec}'" for name, spec in ranges.items())
    return (
        f"Unsupported library versions: installed {pair}; mfpt is tested with {', '.join(outside)}. "
        f"Fix: run `make setup` (installs requirements/lock.txt) or `pip install {wanted}`; "
        f"set {SKIP_ENV}=1 to try this pair anyway."
    )


def installed_stack_problem() -> str | None:
    """The problem of the installed transformers/peft pair (None when supported, or when SKIP_ENV says try it)."""
    if os.environ.get(SKIP_ENV) == "1":
        return None
    return stack_problem(installed_versions(), supported_ranges())


@functools.cache
def ensure_supported_stack() -> None:
    """Refuse to start on a transformers/peft pair outside mfpt's declared ranges (checked once per process)."""
    problem = installed_stack_problem()
    if problem:
        raise UnsupportedStackError(problem)


def expose_past_key_values_on(module: nn.Module) -> bool:
    """The same adapter on `module` itself (a decoder's sequence classifier, whose own forward takes `cache`): peft
    then calls the whole classifier with the prefix, which pools the last real token; True if adapted."""
    signature = inspect.signature(module.forward)
    if "past_key_values" in signature.parameters or "cache" not in signature.parameters:
        return False
    original = module.forward

    @functools.wraps(original)
    def forward(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return original(*args, **kwargs)

    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))
    forward.__signature__ = signature.replace(parameters=params)
    module.forward = forward
    return True


def expose_past_key_values(model: nn.Module) -> bool:
    """Let peft's prefix tuning find the encoder's cache argument under its pre-5.24 name; True if adapted.

    peft 0.21 decides that a model supports prefix tuning by looking for `past_key_values` in the forward
    signature of the model or its backbone. transformers 5.24 renamed that argument `cache` (still accepting the
    old name through a deprecation shim, until 5.40). This wraps the backbone's forward, on this instance only,
    in a function whose signature also lists `past_key_values` and which passes it on as `cache`.
    Nothing changes where the signature already has `past_key_values` (transformers <= 5.23).
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    for module in (model, backbone):
        if module is None or "past_key_values" in inspect.signature(module.forward).parameters:
            return False
    return expose_past_key_values_on(backbone)
