"""Language codes: turn ISO 639-1/639-2/639-3, BCP-47 and FLORES-200 codes into one canonical form.

Canonical form: the ISO 639-3 code of the individual language, lowercase (`swh`, `arb`, `cmn`), plus a
FLORES-style script suffix (`_Arab`) only for the few languages that benchmarks carry in two scripts and only
when the script is not that language's usual one (`ace_Arab`, `arb_Latn`, `cmn_Hant`, `kas_Deva`).

Macrolanguage codes map to the individual language that FLORES-200 uses for them (`sw`/`swa` -> `swh`,
`ar` -> `arb`, `zh`/`zho_Hans` -> `cmn`, `fa` -> `pes`, `et` -> `ekk`, ...), so XNLI's `zh`, FLORES's
`zho_Hans`, UDHR's `cmn` and URIEL's `cmn` meet. A macrolanguage with no entry in MACRO_DOMINANT stays as it is
(`aka`, because FLORES lists Twi separately; `kon`). Region subtags (`pt-BR`, `sw-KE`) are dropped.
The ISO 639-3 table is data: mfpt/core/resources/iso639-3.tsv, rebuilt by scripts/build_iso639_table.py.
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Iterable

from mfpt.core.errors import UserError
from mfpt.core.registry import close_names

__all__ = [
    "UnknownLanguageError",
    "normalize_language",
    "normalize_languages",
    "language_name",
    "base_language",
    "is_known_language",
    "MACRO_DOMINANT",
    "macrolanguages",
    "DEFAULT_SCRIPT",
]


class UnknownLanguageError(UserError, ValueError):
    """A language code that is malformed or absent from the ISO 639-3 table; the message suggests close codes."""


# Macrolanguage -> the individual language that stands for it, chosen to agree with FLORES-200's codes
# (and hence SIB-200 and NLLB) and with URIEL/lang2vec, which index individual languages.
MACRO_DOMINANT: dict[str, str] = {
    "ara": "arb",  # Arabic -> Standard Arabic (FLORES arb_Arab)
    "aym": "ayr",  # Aymara -> Central Aymara (FLORES ayr_Latn)
    "aze": "azj",  # Azerbaijani -> North Azerbaijani (FLORES azj_Latn; South = azb_Arab)
    "chm": "mhr",  # Mari -> Eastern (Meadow) Mari
    "din": "dik",  # Dinka -> Southwestern Dinka (FLORES dik_Latn)
    "est": "ekk",  # Estonian -> Standard Estonian (FLORES writes est_Latn; URIEL and UDHR use ekk)
    "fas": "pes",  # Persian -> Iranian Persian (FLORES pes_Arab; Dari = prs)
    "ful": "fuv",  # Fulah -> Nigerian Fulfulde (FLORES fuv_Latn)
    "grn": "gug",  # Guarani -> Paraguayan Guarani (FLORES writes grn_Latn)
    "kau": "knc",  # Kanuri -> Central Kanuri (FLORES knc_Latn/knc_Arab)
    "kok": "gom",  # Konkani -> Goan Konkani
    "kom": "kpv",  # Komi -> Komi-Zyrian
    "kur": "kmr",  # Kurdish -> Northern Kurdish (FLORES kmr_Latn; Central = ckb)
    "lav": "lvs",  # Latvian -> Standard Latvian (FLORES lvs_Latn)
    "mlg": "plt",  # Malagasy -> Plateau Malagasy (FLORES plt_Latn)
    "mon": "khk",  # Mongolian -> Halh Mongolian (FLORES khk_Cyrl)
    "msa": "zsm",  # Malay -> Standard Malay (FLORES zsm_Latn)
    "nep": "npi",  # Nepali -> Nepali individual language (FLORES npi_Deva)
    "nor": "nob",  # Norwegian -> Bokmal (FLORES nob_Latn; Nynorsk = nno)
    "ori": "ory",  # Oriya -> Odia (FLORES ory_Orya)
    "orm": "gaz",  # Oromo -> West Central Oromo (FLORES gaz_Latn; MasakhaNEWS 'orm')
    "pus": "pbt",  # Pashto -> Southern Pashto (FLORES pbt_Arab)
    "que": "quy",  # Quechua -> Ayacucho Quechua (FLORES quy_Latn)
    "sqi": "als",  # Albanian -> Tosk Albanian (FLORES als_Latn)
    "swa": "swh",  # Swahili -> Swahili individual language (FLORES swh_Latn; XNLI 'sw', MasakhaNEWS 'swa')
    "tmh": "taq",  # Tamashek -> Tamasheq (FLORES taq_Latn/taq_Tfng)
    "uzb": "uzn",  # Uzbek -> Northern Uzbek (FLORES uzn_Latn)
    "yid": "ydd",  # Yiddish -> Eastern Yiddish (FLORES ydd_Hebr)
    "zho": "cmn",  # Chinese -> Mandarin (FLORES zho_Hans/zho_Hant, XNLI 'zh', UDHR cmn_hans)
}

# Usual script of languages that benchmarks carry in more than one script; only these keep a script suffix,
# and only for the other script. Every other language's script subtag is dropped (swh_Latn -> swh).
DEFAULT_SCRIPT: dict[str, str] = {
    "ace": "Latn", "arb": "Arab", "bjn": "Latn", "cmn": "Hans", "kas": "Arab", "knc": "Latn",
    "min": "Latn", "mni": "Beng", "pan": "Guru", "sat": "Olck", "snd": "Arab", "srp": "Cyrl",
    "taq": "Latn", "uzn": "Latn", "yue": "Hant",
}

SCRIPT_NAMES: dict[str, str] = {
    "Arab": "Arabic", "Beng": "Bengali", "Cyrl": "Cyrillic", "Deva": "Devanagari", "Guru": "Gurmukhi",
    "Hans": "Simplified Han", "Hant": "Traditional Han", "Latn": "Latin", "Olck": "Ol Chiki",
    "Tfng": "Tifinagh",
}

# Deprecated two-letter codes that still appear in corpora and locale names (BCP-47 keeps them as aliases).
LEGACY_ALIASES: dict[str, str] = {"iw": "heb", "in": "ind", "ji": "yid", "jw": "jav", "mo": "ron", "sh": "hbs"}

# Retired codes that benchmarks still use as distinct languages: kept as they are, not mapped to the successor.
# (ISO merged ajp into apc in 2023; FLORES-200 and SIB-200 carry both ajp_Arab and apc_Arab.)
KEEP_RETIRED: frozenset[str] = frozenset({"ajp"})

_SUBTAG = re.compile(r"^[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class _Language:
    code: str
    part1: str
    part2b: str
    scope: str  # I individual, M macrolanguage, S special, R retired (see replaced_by)
    macro: str
    replaced_by: str
    name: str


@dataclass(frozen=True)
class _Table:
    by_code: dict[str, _Language]
    part1: dict[str, str]
    part2b: dict[str, str]


@functools.lru_cache(maxsize=1)
def _table() -> _Table:
    """The ISO 639-3 table, read once from the package data."""
    text = resources.files("mfpt.core").joinpath("resources", "iso639-3.tsv").read_text(encoding="utf-8")
    by_code: dict[str, _Language] = {}
    for row in csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE):
        # SIL names the individual Swahili "Swahili (individual language)"; the plain name reads better.
        name = row["name"].replace(" (individual language)", "")
        by_code[row["code"]] = _Language(
            row["code"], row["part1"], row["part2b"], row["scope"], row["macro"], row["replaced_by"], name
        )
    part1 = {lang.part1: lang.code for lang in by_code.values() if lang.part1}
    part2b = {lang.part2b: lang.code for lang in by_code.values() if lang.part2b}
    return _Table(by_code, part1, part2b)


def macrolanguages() -> dict[str, str]:
    """{individual ISO 639-3 code: its macrolanguage} for every individual language that belongs to one."""
    return {lang.code: lang.macro for lang in _table().by_code.values() if lang.macro}


def _split(code: str) -> tuple[str, str]:
    """(language subtag, script subtag or '') of a BCP-47 or FLORES code; other subtags are dropped."""
    if not isinstance(code, str):
        raise UnknownLanguageError(f"Language code {code!r} must be a string such as 'sw', 'swh' or 'swh_Latn'.")
    parts = code.strip().replace("-", "_").split("_")
    if not parts[0] or not all(_SUBTAG.match(p) for p in parts):
        raise UnknownLanguageError(
            f"Language code {code!r} is malformed: expected ISO 639 ('sw', 'swh'), BCP-47 ('sw-KE', 'zh-Hans') "
            "or FLORES-200 ('swh_Latn')."
        )
    script = next((p.title() for p in parts[1:] if len(p) == 4 and p.isalpha()), "")
    return parts[0].lower(), script


def _base(subtag: str) -> str | None:
    """The canonical ISO 639-3 code of a language subtag, or None when the table lacks it."""
    table = _table()
    if len(subtag) == 2:
        code = LEGACY_ALIASES.get(subtag) or table.part1.get(subtag)
    elif len(subtag) == 3:
        code = subtag if subtag in table.by_code else table.part2b.get(subtag)
    else:
        return None
    if code is None:
        return None
    lang = table.by_code[code]
    if lang.replaced_by and code not in KEEP_RETIRED:
        code = lang.replaced_by
    return MACRO_DOMINANT.get(code, code)


def normalize_language(code: str) -> str:
    """The canonical code of `code` (e.g. 'sw', 'swa', 'sw-KE', 'swh_Latn' -> 'swh'); raises UnknownLanguageError."""
    subtag, script = _split(code)
    base = _base(subtag)
    if base is None:
        raise UnknownLanguageError(_unknown_message(code, subtag))
    default = DEFAULT_SCRIPT.get(base)
    return f"{base}_{script}" if default and script and script != default else base


def base_language(code: str) -> str:
    """The ISO 639-3 part of a code, script dropped (for URIEL/lang2vec, which know no scripts)."""
    return normalize_language(code).split("_")[0]


def is_known_language(code: str) -> bool:
    """Whether normalize_language accepts `code`."""
    try:
        normalize_language(code)
    except UnknownLanguageError:
        return False
    return True


def language_name(code: str) -> str:
    """English name of a language code, e.g. 'sw' -> 'Swahili', 'ace_Arab' -> 'Achinese (Arabic script)'."""
    canonical = normalize_language(code)
    base, _, script = canonical.partition("_")
    name = _table().by_code[base].name
    return f"{name} ({SCRIPT_NAMES.get(script, script)} script)" if script else name


def normalize_languages(codes: Iterable[str] | str) -> tuple[str, ...]:
    """Canonical codes in the given order; refuses two codes that mean the same language. A str is split on commas."""
    if isinstance(codes, str):
        codes = [c for c in (part.strip() for part in codes.split(",")) if c]
    seen: dict[str, str] = {}
    out: list[str] = []
    for code in codes:
        canonical = normalize_language(code)
        if canonical in seen:
            raise ValueError(
                f"Languages {seen[canonical]!r} and {code!r} both mean {canonical!r} ({language_name(canonical)}); "
                "list each language once."
            )
        seen[canonical] = code
        out.append(canonical)
    return tuple(out)


def _unknown_message(code: str, subtag: str) -> str:
    """'Unknown language code 'x'. Did you mean 'swh' (Swahili), ...?' with codes or names close to `code`."""
    table = _table()
    # Prefer well-known languages (those with a 639-1 code or a FLORES stand-in); 8,000 codes match anything.
    known = {MACRO_DOMINANT.get(lang.code, lang.code) for lang in table.by_code.values() if lang.part1}
    known |= set(MACRO_DOMINANT.values()) | set(DEFAULT_SCRIPT)
    # Codes differ on purpose from the project's close-name rule (mfpt.core.registry.close_names): a stricter cutoff,
    # since any two three-letter codes share letters, and a ranking by shared prefix before similarity, since a
    # typo usually keeps a code's first letters ('swz' -> 'swe', 'swh' before 'ssw'); ties go alphabetically.
    pool = sorted(known) if len(subtag) <= 3 else []
    ranked = sorted(
        (c for c in pool if difflib.SequenceMatcher(None, subtag, c).ratio() >= 0.6),
        key=lambda c: (-len(_common_prefix(subtag, c)), -difflib.SequenceMatcher(None, subtag, c).ratio(), c),
    )
    close = ranked[:3]
    # A language name typed where a code belongs ("Swahili") gets its code suggested.
    names = {lang.name.lower(): MACRO_DOMINANT.get(lang.code, lang.code) for lang in table.by_code.values()
             if lang.scope in ("I", "M") and not lang.replaced_by}
    for name in close_names(code.strip().lower(), names, n=2, cutoff=0.8):
        if names[name] not in close:
            close.insert(0, names[name])
    hint = ", ".join(f"{c!r} ({table.by_code[c].name})" for c in close)
    did_you_mean = f" Did you mean {hint}?" if close else ""
    return (
        f"Unknown language code {code!r}.{did_you_mean} Use an ISO 639-1/639-3, BCP-47 or FLORES-200 code "
        "(e.g. 'sw', 'swh', 'sw-KE', 'swh_Latn')."
    )


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
