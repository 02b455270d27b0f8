"""Benchmark loaders (XNLI, XGLUE NC, MasakhaNEWS, SIB-200): the hub or the authors' release -> universal schema.

Each loader returns columns text, [text_pair], label (the label name), lang (canonical code) and split
(train/validation/test). `data.train_pool` picks where training rows come from: 'train' keeps the benchmark's
splits; 'validation' relabels the validation split as train (then no validation split remains).
Only the languages in data.languages + data.heldout_languages are read (empty = all of the benchmark's).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from mfpt.config import DataConfig
from mfpt.data import DATA_SOURCES, LABEL, LANG, SPLIT, TEXT, TEXT_PAIR, DataError
from mfpt.languages import UnknownLanguageError, language_name, normalize_language

log = logging.getLogger(__name__)

# The benchmark's own split names; the hub calls dev "validation", the releases call it "dev".
OWN_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class BenchmarkInfo:
    """A benchmark's fixed facts: where it lives, its languages (canonical -> its own code) and its label order."""

    name: str
    hub_id: str
    native_codes: tuple[str, ...]  # the codes the benchmark itself uses (hub configs, release folder names)
    labels: tuple[str, ...]
    train_splits_note: str
    offline_layout: str
    text_columns: tuple[str, ...] = (TEXT, LABEL)

    @property
    def languages(self) -> tuple[str, ...]:
        """Canonical codes, in the benchmark's order."""
        return tuple(normalize_language(code) for code in self.native_codes)

    def native(self) -> dict[str, str]:
        """Canonical code -> the benchmark's own code."""
        return dict(zip(self.languages, self.native_codes))


# The 205 SIB-200 folders of data/annotated/ (github.com/dadelani/sib-200), which are also the hub configs.
SIB200_CODES = (
    "ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn als_Latn amh_Ethi apc_Arab arb_Arab "
    "arb_Latn ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn bak_Cyrl bam_Latn "
    "ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl cat_Latn "
    "ceb_Latn ces_Latn cjk_Latn ckb_Arab crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn dzo_Tibt ell_Grek "
    "eng_Latn epo_Latn est_Latn eus_Latn ewe_Latn fao_Latn fij_Latn fin_Latn fon_Latn fra_Latn fur_Latn fuv_Latn "
    "gaz_Latn gla_Latn gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva hne_Deva hrv_Latn "
    "hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn jpn_Jpan kab_Latn kac_Latn kam_Latn "
    "kan_Knda kas_Arab kas_Deva kat_Geor kaz_Cyrl kbp_Latn kea_Latn khk_Cyrl khm_Khmr kik_Latn kin_Latn kir_Cyrl "
    "kmb_Latn kmr_Latn knc_Arab knc_Latn kon_Latn kor_Hang lao_Laoo lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn "
    "ltg_Latn ltz_Latn lua_Latn lug_Latn luo_Latn lus_Latn lvs_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Arab "
    "min_Latn mkd_Cyrl mlt_Latn mni_Beng mos_Latn mri_Latn mya_Mymr nld_Latn nno_Latn nob_Latn npi_Deva nqo_Nkoo "
    "nso_Latn nus_Latn nya_Latn oci_Latn ory_Orya pag_Latn pan_Guru pap_Latn pbt_Arab pes_Arab plt_Latn pol_Latn "
    "por_Latn prs_Arab quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva sat_Olck scn_Latn shn_Mymr sin_Sinh "
    "slk_Latn slv_Latn smo_Latn sna_Latn snd_Arab som_Latn sot_Latn spa_Latn srd_Latn srp_Cyrl ssw_Latn sun_Latn "
    "swe_Latn swh_Latn szl_Latn tam_Taml taq_Latn taq_Tfng tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi "
    "tpi_Latn tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn urd_Arab "
    "uzn_Latn vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant zho_Hans zho_Hant zsm_Latn "
    "zul_Latn"
).split()

BENCHMARKS: dict[str, BenchmarkInfo] = {
    info.name: info
    for info in (
        BenchmarkInfo(
            name="xnli",
            hub_id="facebook/xnli",  # one parquet config per ISO 639-1 code; premise, hypothesis, label (ClassLabel)
            native_codes=tuple("en fr es de el bg ru tr ar vi th zh hi sw ur".split()),
            labels=("entailment", "neutral", "contradiction"),  # the hub's ClassLabel order
            train_splits_note="train = MultiNLI (392,702 pairs) machine-translated into every language (XNLI-MT); "
            "validation 2,490 and test 5,010 human-translated pairs per language.",
            offline_layout="XNLI-1.0/xnli.{dev,test}.tsv (all languages, column 'language') and, for "
            "train_pool = 'train', XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv",
            text_columns=(TEXT, TEXT_PAIR, LABEL),
        ),
        BenchmarkInfo(
            name="xglue-nc",
            hub_id="microsoft/xglue",  # config 'nc'; splits train, validation.{lang}, test.{lang}
            native_codes=tuple("en de es fr ru".split()),
            labels=("autos", "entertainment", "finance", "foodanddrink", "health", "lifestyle", "news", "sports",
                    "travel", "video"),
            train_splits_note="train = 100k English news only; validation and test 10k per language. Non-English "
            "clients must train on their validation split (data.train_pool = 'validation').",
            offline_layout="NC/xglue.nc.{lang}.{dev,test} and NC/xglue.nc.en.train from xglue_full_dataset.tar.gz "
            "(tab-separated title, body, category; no header)",
        ),
        BenchmarkInfo(
            name="masakhanews",
            hub_id="masakhane/masakhanews",  # one config per language code; headline, text, label (ClassLabel)
            native_codes=tuple("amh eng fra hau ibo lin lug orm pcm run sna som swa tir xho yor".split()),
            labels=("business", "entertainment", "health", "politics", "religion", "sports", "technology"),
            train_splits_note="train/dev/test per language (about 70/10/20); not every language has all 7 topics.",
            offline_layout="{lang}/{train,dev,test}.tsv as in the repository's data/ folder "
            "(columns category, headline, text, url)",
        ),
        BenchmarkInfo(
            name="sib200",
            hub_id="Davlan/sib200",  # one config per FLORES-200 code; index_id, category, text
            native_codes=tuple(SIB200_CODES),
            labels=("entertainment", "geography", "health", "politics", "science/technology", "sports", "travel"),
            train_splits_note="701 train / 99 dev / 204 test sentences per language (FLORES-200 sentences, "
            "parallel across languages).",
            offline_layout="{flores_code}/{train,dev,test}.tsv as in the repository's data/annotated/ folder "
            "(columns index_id, category, text)",
        ),
    )
}


# --------------------------------------------------------------------------------------------- shared steps


def wanted_languages(info: BenchmarkInfo, data: DataConfig) -> dict[str, str]:
    """Canonical -> native code of the languages to read: data.languages + heldout (empty = all)."""
    native = info.native()
    asked = list(data.languages) + list(data.heldout_languages)
    if not data.languages:
        asked = list(native) + list(data.heldout_languages)
    out: dict[str, str] = {}
    for code in asked:
        try:
            canonical = normalize_language(code)
        except UnknownLanguageError as err:
            raise DataError(f"{info.name}: {err}") from None
        if canonical not in native:
            available = ", ".join(f"{c} ({n})" for c, n in native.items())
            raise DataError(
                f"{info.name} has no language {code!r} ({canonical}, {language_name(canonical)}). "
                f"It has: {available}."
            )
        out[canonical] = native[canonical]
    return out


def own_splits(data: DataConfig) -> tuple[str, ...]:
    """The benchmark splits to read for the chosen train pool."""
    return ("train", "validation", "test") if data.train_pool == "train" else ("validation", "test")


def finish(info: BenchmarkInfo, frame: pd.DataFrame, data: DataConfig, origin: str) -> pd.DataFrame:
    """Map the benchmark's splits onto train/validation/test, check labels, canonicalise lang."""
    if data.train_pool == "validation":
        frame = frame[frame[SPLIT] != "train"].copy()
        frame[SPLIT] = frame[SPLIT].replace({"validation": "train"})
    unknown = sorted(set(frame[LABEL]) - set(info.labels))
    if unknown:
        raise DataError(f"{origin}: label(s) {unknown} are not {info.name} labels {list(info.labels)}.")
    columns = list(info.text_columns) + [LANG, SPLIT]
    return frame[columns].reset_index(drop=True)


def _frame(rows: Iterable[dict[str, Any]] | pd.DataFrame, **constant: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    for column, value in constant.items():
        frame[column] = value
    return frame


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"Missing file {str(path)!r}: {what}.")
    return path


def _read_tsv(path: Path, what: str, *, quoted: bool, header: bool = True, names: list[str] | None = None,
              required: Iterable[str] = ()) -> pd.DataFrame:
    """A TSV as strings; `quoted` = pandas' default quoting (files written by pandas), else raw tab splitting."""
    _require(path, what)
    try:
        frame = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, header=0 if header else None, names=names,
            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, encoding="utf-8",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"File {str(path)!r} ({what}) could not be parsed as TSV: {err}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"File {str(path)!r} ({what}) lacks column(s) {missing}; it has {list(frame.columns)}."
        )
    return frame


# --------------------------------------------------------------------------------------------- hub access


def hub_split(hub_id: str, config: str, split: str) -> Any:
    """One split of a hub dataset; script-based repos (refused by datasets >= 4) are read from the parquet export."""
    import datasets  # lazy: the hub path is optional and datasets is slow to import

    try:
        return datasets.load_dataset(hub_id, config, split=split)
    except RuntimeError as err:
        if "script" not in str(err).lower():
            raise
    # The hub's automatic parquet conversion keeps one folder per config and split.
    files = f"hf://datasets/{hub_id}@refs%2Fconvert%2Fparquet/{config}/{split}/*.parquet"
    return datasets.load_dataset("parquet", data_files={split: files}, split=split)


def _column_as_names(dataset: Any, column: str) -> list[str]:
    """A label column as names: ClassLabel ints through int2str, plain strings as they are."""
    feature = dataset.features[column]
    values = dataset[column]
    if hasattr(feature, "int2str"):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]


# --------------------------------------------------------------------------------------------- XNLI


def _xnli_offline(root: Path, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for split, file in (("validation", "xnli.dev.tsv"), ("test", "xnli.test.tsv")):
        if split not in splits:
            continue
        path = root / "XNLI-1.0" / file
        table = _read_tsv(path, f"XNLI 1.0 {split} set (all languages) from XNLI-1.0.zip", quoted=False,
                          required=("language", "gold_label", "sentence1", "sentence2"))
        for canonical, code in langs.items():
            part = table[table["language"] == code]
            if part.empty:
                raise DataError(f"File {str(path)!r} has no rows with language {code!r}.")
            frames.append(_frame({TEXT: part["sentence1"], TEXT_PAIR: part["sentence2"], LABEL: part["gold_label"]},
                                 **{LANG: canonical, SPLIT: split}))
    if "train" in splits:
        for canonical, code in langs.items():
            path = root / "XNLI-MT-1.0" / "multinli" / f"multinli.train.{code}.tsv"
            table = _read_tsv(path, f"XNLI-MT 1.0 machine-translated MultiNLI training set for {code!r} "
                              "from XNLI-MT-1.0.zip (or set data.train_pool = 'validation')", quoted=False,
                              required=("premise", "hypo", "label"))
            # XNLI-MT spells the third class 'contradictory'; the test sets and the hub say 'contradiction'.
            labels = table["label"].replace({"contradictory": "contradiction"})
            frames.append(_frame({TEXT: table["premise"], TEXT_PAIR: table["hypo"], LABEL: labels},
                                 **{LANG: canonical, SPLIT: "train"}))
    return pd.concat(frames, ignore_index=True)


def _xnli_hub(info: BenchmarkInfo, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for canonical, code in langs.items():
        for split in splits:
            ds = hub_split(info.hub_id, code, split)
            frames.append(_frame({TEXT: ds["premise"], TEXT_PAIR: ds["hypothesis"],
                                  LABEL: _column_as_names(ds, "label")}, **{LANG: canonical, SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------- XGLUE NC

_NC_FILE = {"train": "train", "validation": "dev", "test": "test"}


def _nc_check_pool(langs: dict[str, str], data: DataConfig) -> None:
    # Refuse rather than silently switch pools: a result trained on validation must say so in its config.
    non_english = [c for c in langs if c != "eng"]
    if data.train_pool == "train" and non_english:
        raise DataError(
            f"XGLUE NC has English-only training data, but data.train_pool = 'train' and language(s) "
            f"{', '.join(non_english)} are asked for. Set data.train_pool = 'validation' so each language trains "
            "on its own validation split (its test split stays held out)."
        )


def _nc_rows(title: Iterable[str], body: Iterable[str]) -> list[str]:
    # Title and body are one text: the universal schema's text_pair is for sentence-pair tasks.
    return [f"{t} {b}".strip() for t, b in zip(title, body)]


def _nc_offline(root: Path, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for canonical, code in langs.items():
        for split in splits:
            path = root / "NC" / f"xglue.nc.{code}.{_NC_FILE[split]}"
            table = _read_tsv(path, f"XGLUE NC {split} set for {code!r} from xglue_full_dataset.tar.gz",
                              quoted=False, header=False, names=["title", "body", "category"])
            if (table["category"] == "").any():
                raise DataError(f"File {str(path)!r} has rows without a category (unlabelled copy of the set?).")
            frames.append(_frame({TEXT: _nc_rows(table["title"], table["body"]), LABEL: table["category"]},
                                 **{LANG: canonical, SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


def _nc_hub(info: BenchmarkInfo, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for canonical, code in langs.items():
        for split in splits:
            ds = hub_split(info.hub_id, "nc", "train" if split == "train" else f"{split}.{code}")
            frames.append(_frame({TEXT: _nc_rows(ds["news_title"], ds["news_body"]),
                                  LABEL: _column_as_names(ds, "news_category")}, **{LANG: canonical, SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------- MasakhaNEWS, SIB-200

_RELEASE_FILE = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def _language_dir(root: Path, code: str, nested: str) -> Path:
    """root/{code}, or root/{nested}/{code} when root is the repository checkout itself."""
    if not (root / code).is_dir() and (root / nested / code).is_dir():
        return root / nested / code
    return root / code


def _news_text(headline: Iterable[str], text: Iterable[str]) -> list[str]:
    # Headline + body, as MasakhaNEWS's own baselines classify (its 'headline_text' field).
    return [f"{h} {t}".strip() for h, t in zip(headline, text)]


def _masakhanews_offline(root: Path, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for canonical, code in langs.items():
        folder = _language_dir(root, code, "data")
        for split in splits:
            path = folder / _RELEASE_FILE[split]
            table = _read_tsv(path, f"MasakhaNEWS {split} set for {code!r}", quoted=True,
                              required=("category", "headline", "text"))
            frames.append(_frame({TEXT: _news_text(table["headline"], table["text"]), LABEL: table["category"]},
                                 **{LANG: canonical, SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


def _masakhanews_hub(info: BenchmarkInfo, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for canonical, code in langs.items():
        for split in splits:
            ds = hub_split(info.hub_id, code, split)
            frames.append(_frame({TEXT: _news_text(ds["headline"], ds["text"]), LABEL: _column_as_names(ds, "label")},
                                 **{LANG: canonical, SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


def _sib200_offline(root: Path, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for canonical, code in langs.items():
        folder = _language_dir(root, code, "data/annotated")
        for split in splits:
            path = folder / _RELEASE_FILE[split]
            table = _read_tsv(path, f"SIB-200 {split} set for {code!r}", quoted=True,
                              required=("index_id", "category", "text"))
            frames.append(_frame({TEXT: table["text"], LABEL: table["category"]}, **{LANG: canonical, SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


def _sib200_hub(info: BenchmarkInfo, langs: dict[str, str], splits: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for canonical, code in langs.items():
        for split in splits:
            ds = hub_split(info.hub_id, code, split)
            frames.append(_frame({TEXT: ds["text"], LABEL: _column_as_names(ds, "category")},
                                 **{LANG: canonical, SPLIT: split}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------- registration

Offline = Callable[[Path, dict[str, str], tuple[str, ...]], pd.DataFrame]
Hub = Callable[[BenchmarkInfo, dict[str, str], tuple[str, ...]], pd.DataFrame]


def _loader(name: str, offline: Offline, hub: Hub, check: Callable[[dict[str, str], DataConfig], None] | None = None):
    info = BENCHMARKS[name]

    def load(data: DataConfig) -> pd.DataFrame:
        langs = wanted_languages(info, data)
        if check is not None:
            check(langs, data)
        splits = own_splits(data)
        if data.path:
            root = Path(data.path).expanduser()
            if not root.is_dir():
                raise DataError(f"data.path {data.path!r} is not a directory; {info.name} expects {info.offline_layout}.")
            frame, origin = offline(root, langs, splits), f"{info.name} files under {data.path!r}"
        else:
            frame, origin = hub(info, langs, splits), f"{info.name} from the hub ({info.hub_id})"
        return finish(info, frame, data, origin)

    load.__name__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"Load {name} ({info.hub_id} on the hub, or a local copy laid out as {info.offline_layout})."
    return DATA_SOURCES.register(name)(load)


load_xnli = _loader("xnli", _xnli_offline, _xnli_hub)
load_xglue_nc = _loader("xglue-nc", _nc_offline, _nc_hub, _nc_check_pool)
load_masakhanews = _loader("masakhanews", _masakhanews_offline, _masakhanews_hub)
load_sib200 = _loader("sib200", _sib200_offline, _sib200_hub)
