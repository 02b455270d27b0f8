"""Reading and writing configs: TOML files, `--set section.key=value` overrides, Flower's run_config, and `mfpt keys`.

Precedence is explicit: the defaults, then the TOML file, then the overrides (command line or run_config), then the
values `tuning.file` chose on validation for the run's paradigm and method (a key both overridden and tuned is
refused), and the result is validated once (mfpt.config.schema).
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import typing
from pathlib import Path
from typing import Any

import tomli_w

from mfpt.config.schema import ExperimentConfig, field_type, from_dict, parse_override, set_dotted, to_dict
from mfpt.config.tuning import apply_tuning
from mfpt.core.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                apply_tuned: bool = True) -> ExperimentConfig:
    """Read a TOML experiment file (or the defaults), apply overrides and (unless `apply_tuned` is false, as a
    search reads the config it starts from) tuning.file's values, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError(f"Config file {str(path)!r} is a directory; pass the path of a .toml experiment file.")
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist; pass the path of a .toml experiment file.")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"Config file {str(path)!r} is not valid TOML: {err}.") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"Config file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                              "save it as UTF-8.") from None
        except OSError as err:
            raise ConfigError(f"Config file {str(path)!r} cannot be read ({err.strerror or err}).") from None
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    raw = set_dotted(raw, overrides or {})
    return from_dict(apply_tuning(raw, overrides or {}) if apply_tuned else raw)


# --------------------------------------------------------------------------------------------- run_config


def to_flat(cfg: ExperimentConfig) -> dict[str, bool | int | float | str]:
    """Flattened `section.key` view for Flower's run_config / ConfigRecord (lists as "a,b,c")."""
    flat: dict[str, bool | int | float | str] = {}

    def visit(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                visit(v, f"{prefix}{k}.")
            elif isinstance(v, list):
                flat[prefix + k] = ",".join(str(x) for x in v)
            else:
                flat[prefix + k] = v

    visit(to_dict(cfg), "")
    return flat


def from_flat(flat: typing.Mapping[str, Any]) -> ExperimentConfig:
    """Inverse of to_flat; unknown keys are refused like in a TOML file."""
    return from_dict(set_dotted({}, dict(flat)))


def to_toml(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML text (what a run writes next to its results), written by tomli_w."""
    return tomli_w.dumps(to_dict(cfg))


def key_reference() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, help) of every config key, sections in schema order ('' = the top level)."""
    rows: list[tuple[str, str, Any, str]] = []

    def visit(cls: type, section: str) -> None:
        for f in dataclasses.fields(cls):
            annotation = field_type(cls, f.name)
            if dataclasses.is_dataclass(annotation):
                visit(annotation, f.name)
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if isinstance(default, enum.Enum):
                default = default.value
            rows.append((section, f.name, default, f.metadata.get("help", "")))

    visit(ExperimentConfig, "")
    return rows


def describe() -> str:
    """Every key with its default and help text (what `mfpt keys` prints)."""
    lines, section = [], ""
    for where, key, default, text in key_reference():
        if where != section:
            lines.append(f"\n[{where}]")
            section = where
        lines.append(f"  {where + '.' if where else ''}{key} = {default!r}\n      {text}")
    return "\n".join(lines)


def describe_markdown() -> str:
    """Every key as Markdown tables, one per section (what `mfpt keys --markdown` prints; docs/configuration.md)."""
    lines, section = [], None
    for where, key, default, text in key_reference():
        if where != section:
            lines += ["", f"### [{where}]" if where else "### Top level", "", "| key | default | meaning |",
                      "|---|---|---|"]
            section = where
        shown = tomli_w.dumps({"v": list(default) if isinstance(default, tuple) else default})[4:].strip()
        meaning = text.replace("|", "\\|")  # a bar would end the table cell
        lines.append(f"| `{key}` | `{shown}` | {meaning} |")
    return "\n".join(lines).strip() + "\n"
