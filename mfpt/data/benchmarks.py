"""Benchmark sources (XNLI, XGLUE NC, MasakhaNEWS, SIB-200): the hub, a clone of the hub repository, or the authors'
release (flat or inside a checkout of their repository) -> universal schema.

Each source returns columns text, [text_pair], label (the label name), lang (canonical code) and split
(train/validation/test). `data.train_pool` picks where training rows come from: 'train' keeps the benchmark's
splits; 'validation' relabels the validation split as train (then no validation split remains).
Only the languages in data.languages + data.heldout_languages are read (empty = all of the benchmark's).

A benchmark is data: where its tables lie on the hub and in the release, and a ColumnMap per table saying which
columns become text, text_pair and label. One reader, `read_benchmark`, turns any of them into rows.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

import pandas as pd

from mfpt.config import DataConfig
from mfpt.core.hub import ensure_hub_reachable, is_unreachable
from mfpt.core.languages import UnknownLanguageError, language_name, normalize_language
from mfpt.data.sources import DATA_SOURCES, LABEL, LANG, SPLIT, TEXT, TEXT_PAIR, DataError, DataSource

# The benchmark's own split names; the hub calls dev "validation", the releases call it "dev".
OWN_SPLITS = ("train", "validation", "test")
RELEASE_SPLITS = {"train": "train", "validation": "dev", "test": "test"}


@dataclass(frozen=True)
class ColumnMap:
    """Which columns of a source table become text, text_pair and label; several text columns join with a space."""

    text: tuple[str, ...]
    label: str
    text_pair: str = ""
    label_names: Mapping[str, str] = field(default_factory=dict)  # the table's label spellings -> the benchmark's

    @property
    def schema_columns(self) -> tuple[str, ...]:
        """The universal-schema text and label columns this map fills, in schema order."""
        return (TEXT, TEXT_PAIR, LABEL) if self.text_pair else (TEXT, LABEL)

    def rows(self, table: Mapping[str, Sequence[str]], lang: str, split: str) -> pd.DataFrame:
        """`table`'s rows in the universal schema, all tagged with one language and split."""
        texts = [table[column] for column in self.text]
        columns: dict[str, Any] = {
            TEXT: texts[0] if len(texts) == 1 else [" ".join(parts).strip() for parts in zip(*texts)]
        }
        if self.text_pair:
            columns[TEXT_PAIR] = table[self.text_pair]
        labels = table[self.label]
        columns[LABEL] = [self.label_names.get(v, v) for v in labels] if self.label_names else labels
        return pd.DataFrame(columns).assign(**{LANG: lang, SPLIT: split})


@dataclass(frozen=True)
class HubTable:
    """Where a language's split lies in the benchmark's hub repository, and how its columns map to the schema."""

    columns: ColumnMap
    config: str = "{code}"  # {code} = the benchmark's own language code
    splits: Mapping[str, str] = field(default_factory=lambda: {split: split for split in OWN_SPLITS})  # ours -> hub's
    # A split's parquet files in a clone of the hub repository ({config}, {split} = the hub's names); empty when the
    # repository holds no data of its own (a loading script, or TSVs that the release layout already reads).
    clone_files: str = ""
    # What to do instead when the hub cannot serve the benchmark (a gated loading script without a parquet export).
    manual_download: str = ""


@dataclass(frozen=True)
class ReleaseFile:
    """A TSV of the authors' release: one per language and split, unless `language_column` picks out languages."""

    path: str  # under data.path; {code} = the benchmark's own language code, {release_split} = train, dev or test
    what: str  # the file in words, for error messages; {split} = our split name, {code} = the benchmark's code
    columns: ColumnMap
    file_columns: tuple[str, ...]  # the columns relied on (checked against the header), or all of a headerless file's
    quoted: bool  # pandas' default quoting (files written by pandas), else raw tab splitting
    header: bool = True
    language_column: str = ""  # set when one file holds every language
    # Where the language folders lie when data.path is a checkout of the authors' repository or a clone of the hub
    # repository, tried in order after data.path itself.
    checkout_folders: tuple[str, ...] = ()


@dataclass(frozen=True)
class BenchmarkInfo:
    """A benchmark's fixed facts: where it lives, its languages (canonical -> its own code), its label order, and
    how its hub and release tables map to the universal schema."""

    name: str
    title: str  # the benchmark's name in prose
    hub_id: str
    native_codes: tuple[str, ...]  # the codes the benchmark itself uses (hub configs, release folder names)
    labels: tuple[str, ...]
    train_splits_note: str
    offline_layout: str
    hub: HubTable
    release: ReleaseFile
    train_release: ReleaseFile | None = None  # when the training split is a release of its own
    train_languages: tuple[str, ...] = ()  # canonical codes of the only languages with a training split (empty: all)

    @property
    def languages(self) -> tuple[str, ...]:
        """Canonical codes, in the benchmark's order."""
        return tuple(normalize_language(code) for code in self.native_codes)

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The universal-schema text and label columns the benchmark fills."""
        return self.hub.columns.schema_columns

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

# News title and body (XGLUE NC), headline and body (MasakhaNEWS) join into one text: the universal schema's
# text_pair is for sentence-pair tasks, and MasakhaNEWS's own baselines classify headline + body ('headline_text').
_NEWS_TEXT = ("headline", "text")

BENCHMARKS: dict[str, BenchmarkInfo] = {
    info.name: info
    for info in (
        BenchmarkInfo(
            name="xnli",
            title="XNLI",
            hub_id="facebook/xnli",  # one parquet config per ISO 639-1 code; premise, hypothesis, label (ClassLabel)
            native_codes=tuple("en fr es de el bg ru tr ar vi th zh hi sw ur".split()),
            labels=("entailment", "neutral", "contradiction"),  # the hub's ClassLabel order
            train_splits_note="train = MultiNLI (392,702 pairs) machine-translated into every language (XNLI-MT); "
            "validation 2,490 and test 5,010 human-translated pairs per language.",
            offline_layout="XNLI-1.0/xnli.{dev,test}.tsv (all languages, column 'language') and, for "
            "train_pool = 'train', XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv; or a clone of the hub repository "
            "({lang}/{train,validation,test}-*.parquet)",
            hub=HubTable(ColumnMap(text=("premise",), text_pair="hypothesis", label="label"),
                         clone_files="{config}/{split}-*.parquet"),
            release=ReleaseFile(
                path="XNLI-1.0/xnli.{release_split}.tsv",
                what="XNLI 1.0 {split} set (all languages) from XNLI-1.0.zip",
                columns=ColumnMap(text=("sentence1",), text_pair="sentence2", label="gold_label"),
                file_columns=("language", "gold_label", "sentence1", "sentence2"),
                quoted=False,
                language_column="language",
            ),
            train_release=ReleaseFile(
                path="XNLI-MT-1.0/multinli/multinli.train.{code}.tsv",
                what="XNLI-MT 1.0 machine-translated MultiNLI training set for {code!r} from XNLI-MT-1.0.zip "
                "(or set data.train_pool = 'validation')",
                # XNLI-MT spells the third class 'contradictory'; the test sets and the hub say 'contradiction'.
                columns=ColumnMap(text=("premise",), text_pair="hypo", label="label",
                                  label_names={"contradictory": "contradiction"}),
                file_columns=("premise", "hypo", "label"),
                quoted=False,
            ),
        ),
        BenchmarkInfo(
            name="xglue-nc",
            title="XGLUE NC",
            hub_id="microsoft/xglue",  # config 'nc'; splits train, validation.{lang}, test.{lang}
            native_codes=tuple("en de es fr ru".split()),
            labels=("autos", "entertainment", "finance", "foodanddrink", "health", "lifestyle", "news", "sports",
                    "travel", "video"),
            train_splits_note="train = 100k English news only; validation and test 10k per language. Non-English "
            "clients must train on their validation split (data.train_pool = 'validation').",
            offline_layout="NC/xglue.nc.{lang}.{dev,test} and NC/xglue.nc.en.train from xglue_full_dataset.tar.gz "
            "(tab-separated title, body, category; no header)",
            hub=HubTable(
                ColumnMap(text=("news_title", "news_body"), label="news_category"),
                config="nc",
                splits={"train": "train", "validation": "validation.{code}", "test": "test.{code}"},
                # microsoft/xglue is a loading script (refused by datasets >= 4) that fetches a gated archive.
                manual_download="Download 'XGLUE Data with Test' (xglue_full_dataset.tar.gz) from "
                "https://microsoft.github.io/XGLUE/, unpack it, and set data.path (mfpt prepare: --path) to the "
                "unpacked folder that holds NC/ (e.g. --set data.path=/data/xglue_full_dataset).",
            ),
            release=ReleaseFile(
                path="NC/xglue.nc.{code}.{release_split}",
                what="XGLUE NC {split} set for {code!r} from xglue_full_dataset.tar.gz",
                columns=ColumnMap(text=("title", "body"), label="category"),
                file_columns=("title", "body", "category"),
                quoted=False,
                header=False,
            ),
            train_languages=("eng",),
        ),
        BenchmarkInfo(
            name="masakhanews",
            title="MasakhaNEWS",
            hub_id="masakhane/masakhanews",  # one config per language code; headline, text, label (ClassLabel)
            native_codes=tuple("amh eng fra hau ibo lin lug orm pcm run sna som swa tir xho yor".split()),
            labels=("business", "entertainment", "health", "politics", "religion", "sports", "technology"),
            train_splits_note="train/dev/test per language (about 70/10/20); not every language has all 7 topics.",
            offline_layout="{lang}/{train,dev,test}.tsv as in the data/ folder of the GitHub repository and of the "
            "hub repository (columns category, headline, text, url); data.path may be the folder or the checkout",
            hub=HubTable(ColumnMap(text=_NEWS_TEXT, label="label")),
            release=ReleaseFile(
                path="{code}/{release_split}.tsv",
                what="MasakhaNEWS {split} set for {code!r}",
                columns=ColumnMap(text=_NEWS_TEXT, label="category"),
                file_columns=("category", "headline", "text"),
                quoted=True,
                checkout_folders=("data",),
            ),
        ),
        BenchmarkInfo(
            name="sib200",
            title="SIB-200",
            hub_id="Davlan/sib200",  # one config per FLORES-200 code; index_id, category, text
            native_codes=tuple(SIB200_CODES),
            labels=("entertainment", "geography", "health", "politics", "science/technology", "sports", "travel"),
            train_splits_note="701 train / 99 dev / 204 test sentences per language (FLORES-200 sentences, "
            "parallel across languages).",
            offline_layout="{flores_code}/{train,dev,test}.tsv as in the GitHub repository's data/annotated/ "
            "folder or the hub repository's data/ folder (columns index_id, category, text); data.path may be the "
            "folder or the checkout",
            hub=HubTable(ColumnMap(text=("text",), label="category")),
            release=ReleaseFile(
                path="{code}/{release_split}.tsv",
                what="SIB-200 {split} set for {code!r}",
                columns=ColumnMap(text=("text",), label="category"),
                file_columns=("index_id", "category", "text"),
                quoted=True,
                checkout_folders=("data/annotated", "data"),  # github.com/dadelani/sib-200, then Davlan/sib200
            ),
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


def check_train_pool(info: BenchmarkInfo, langs: dict[str, str], data: DataConfig) -> None:
    """Refuse languages without a training split of their own when data.train_pool = 'train'."""
    # Refuse rather than silently switch pools: a result trained on validation must say so in its config.
    untrainable = [c for c in langs if info.train_languages and c not in info.train_languages]
    if data.train_pool == "train" and untrainable:
        only = "/".join(language_name(c) for c in info.train_languages)
        raise DataError(
            f"{info.title} has {only}-only training data, but data.train_pool = 'train' and language(s) "
            f"{', '.join(untrainable)} are asked for. Set data.train_pool = 'validation' (mfpt prepare: "
            "--train-pool validation) so each language trains on its own validation split (its test split stays "
            "held out)."
        )


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


# --------------------------------------------------------------------------------------------- hub tables

MAIN, PARQUET_EXPORT = "main", "refs/convert/parquet"  # the hub's default branch and its automatic parquet conversion


def hub_revision(hub_id: str, ref: str) -> str | None:
    """The commit `ref` of a hub dataset repository points at now, or None when the hub cannot be asked."""
    from huggingface_hub import HfApi  # lazy, like datasets

    try:
        return HfApi().dataset_info(hub_id, revision=ref).sha
    except Exception as err:  # offline, unreachable or gated: datasets may still read its cached copy, unpinned
        if isinstance(err, OSError) or is_unreachable(err):
            return None
        raise


def _first_line(err: BaseException) -> str:
    # datasets' messages run over several lines; a user error is printed as one.
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _column_as_names(dataset: Any, column: str) -> list[str]:
    """A label column as names: ClassLabel ints through int2str, plain strings as they are."""
    feature = dataset.features[column]
    values = dataset[column]
    if hasattr(feature, "int2str"):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]


def dataset_table(dataset: Any, columns: ColumnMap) -> dict[str, Any]:
    """The columns a ColumnMap reads from a `datasets.Dataset`, labels as names."""
    table = {column: dataset[column] for column in columns.text + ((columns.text_pair,) if columns.text_pair else ())}
    table[columns.label] = _column_as_names(dataset, columns.label)
    return table


class HubReader:
    """Reads a benchmark's tables from the hub, pinned to the commit its branch pointed at on the first read;
    a loading-script repository (refused by datasets >= 4) is read from its parquet export instead."""

    def __init__(self, info: BenchmarkInfo) -> None:
        self.info = info
        self.ref = MAIN
        self.revisions: dict[str, str | None] = {}  # ref -> commit read (None: the hub could not be asked)

    @property
    def revision(self) -> str | None:
        """The commit the tables were read from, if the hub said which."""
        return self.revisions.get(self.ref)

    def _pin(self, ref: str) -> str | None:
        if ref not in self.revisions:
            self.revisions[ref] = hub_revision(self.info.hub_id, ref)
        return self.revisions[ref]

    def __call__(self, code: str, split: str) -> tuple[dict[str, Any], ColumnMap]:
        """One language's split as the columns its ColumnMap reads (labels as names), and that map."""
        hub = self.info.hub
        ensure_hub_reachable(f"the {self.info.name} dataset {self.info.hub_id} ({code}, {split})",
                             f"data.path = a local copy ({self.info.offline_layout})")
        dataset = self._dataset(hub.config.format(code=code), hub.splits[split].format(code=code))
        return dataset_table(dataset, hub.columns), hub.columns

    def _dataset(self, config: str, split: str) -> Any:
        import datasets  # lazy: the hub path is optional and datasets is slow to import

        hub_id = self.info.hub_id
        if self.ref == MAIN:
            try:
                return datasets.load_dataset(hub_id, config, split=split, revision=self._pin(MAIN))
            except RuntimeError as err:
                if "script" not in str(err).lower():
                    raise
                self.ref = PARQUET_EXPORT
            except (OSError, ValueError) as err:
                raise self._unreadable(config, split, err, script=False) from None
        # The hub's automatic parquet conversion keeps one folder per config and split.
        revision = self._pin(PARQUET_EXPORT) or quote(PARQUET_EXPORT, safe="")
        files = f"hf://datasets/{hub_id}@{revision}/{config}/{split}/*.parquet"
        try:
            return datasets.load_dataset("parquet", data_files={split: files}, split=split)
        except (OSError, ValueError) as err:
            raise self._unreadable(config, split, err, script=True) from None

    def _unreadable(self, config: str, split: str, err: BaseException, script: bool) -> DataError:
        info = self.info
        what = (f"{info.hub_id} is a loading script, which datasets >= 4 refuses, and its parquet export failed too "
                f"({_first_line(err)})") if script else _first_line(err)
        fix = info.hub.manual_download or (f"Without the hub, set data.path (mfpt prepare: --path) to a local copy: "
                                          f"{info.offline_layout}.")
        return DataError(f"{info.title} could not be read from the hub ({info.hub_id}, config {config!r}, split "
                         f"{split!r}): {what}. {fix}")


# --------------------------------------------------------------------------------------------- local copies


def release_for(info: BenchmarkInfo, split: str) -> ReleaseFile:
    """The release file that holds `split` (XNLI's training split is a release of its own)."""
    return info.train_release if split == "train" and info.train_release else info.release


def local_table(info: BenchmarkInfo, root: Path, read: dict[Path, pd.DataFrame], code: str,
                split: str) -> tuple[Mapping[str, Sequence[str]], ColumnMap]:
    """One language's split from a local copy under `root`, and its ColumnMap: the release file (flat, or inside a
    checkout of the authors' or the hub's repository), else the parquet files of a hub-repository clone; `read`
    keeps release files read already (XNLI keeps every language in one file)."""
    release = release_for(info, split)
    name = release.path.format(code=code, release_split=RELEASE_SPLITS[split])
    tried = [root / folder / name for folder in ("",) + release.checkout_folders]
    for path in tried:
        if path.is_file():
            return _release_rows(release, path, read, code, release.what.format(code=code, split=split))
    hub = info.hub
    if hub.clone_files:
        pattern = hub.clone_files.format(config=hub.config.format(code=code), split=hub.splits[split].format(code=code))
        files = sorted(root.glob(pattern))
        if files:
            return dataset_table(_clone_dataset(files), hub.columns), hub.columns
        tried.append(root / pattern)
    raise DataError(
        f"Missing file {str(tried[0])!r}: {release.what.format(code=code, split=split)}. Paths tried: "
        f"{', '.join(repr(str(p)) for p in tried)}. data.path must hold {info.offline_layout}."
    )


def _clone_dataset(files: list[Path]) -> Any:
    """A split's parquet files from a hub-repository clone, with the ClassLabel names stored in their metadata."""
    import datasets

    try:
        return datasets.load_dataset("parquet", data_files={"rows": [str(f) for f in files]}, split="rows")
    except (OSError, ValueError) as err:  # pyarrow's errors are both; a git-lfs pointer is not parquet
        raise DataError(f"File {str(files[0])!r} could not be read as parquet ({_first_line(err)}); if the clone "
                        "was made without git-lfs, run `git lfs pull` in it.") from None


def _release_rows(release: ReleaseFile, path: Path, read: dict[Path, pd.DataFrame], code: str,
                  what: str) -> tuple[pd.DataFrame, ColumnMap]:
    """One language's rows of a release file, and the file's ColumnMap."""
    if path not in read:
        read[path] = _read_tsv(path, release, what)
    table = read[path]
    if release.language_column:
        table = table[table[release.language_column] == code].reset_index(drop=True)
        if table.empty:
            raise DataError(f"File {str(path)!r} has no rows with language {code!r}.")
    return table, release.columns


def _read_tsv(path: Path, release: ReleaseFile, what: str) -> pd.DataFrame:
    """A release TSV as strings, refused when unparseable, short of a column or holding unlabelled rows."""
    try:
        frame = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, header=0 if release.header else None,
            names=None if release.header else list(release.file_columns),
            quoting=csv.QUOTE_MINIMAL if release.quoted else csv.QUOTE_NONE, encoding="utf-8",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"File {str(path)!r} ({what}) could not be parsed as TSV: {err}") from None
    missing = [c for c in release.file_columns if c not in frame.columns]
    if missing:
        raise DataError(f"File {str(path)!r} ({what}) lacks column(s) {missing}; it has {list(frame.columns)}.")
    label = release.columns.label
    if (frame[label] == "").any():
        raise DataError(f"File {str(path)!r} has rows without a {label} (unlabelled copy of the set?).")
    return frame


# --------------------------------------------------------------------------------------------- the reader

# (benchmark's language code, our split name) -> that table's columns, and the ColumnMap that reads them
TableFetcher = Callable[[str, str], tuple[Mapping[str, Sequence[str]], ColumnMap]]


@dataclass(frozen=True)
class Provenance:
    """Where a benchmark's rows came from, for data cards: the hub id or local path, and the commit read."""

    benchmark: str
    location: str  # the hub id, or the local path
    revision: str  # the hub commit; 'local' for a local copy; 'unknown' when the hub could not be asked
    ref: str = ""  # the hub branch of that commit: 'main', or the parquet export for loading-script repositories


def read_benchmark(langs: dict[str, str], splits: tuple[str, ...], fetch_table: TableFetcher) -> pd.DataFrame:
    """Every asked language (canonical -> benchmark code) and split, in the universal schema."""
    frames = []
    for canonical, code in langs.items():
        for split in splits:
            table, columns = fetch_table(code, split)
            frames.append(columns.rows(table, canonical, split))
    return pd.concat(frames, ignore_index=True)


def load_benchmark_with_provenance(info: BenchmarkInfo, data: DataConfig) -> tuple[pd.DataFrame, Provenance]:
    """A benchmark's asked languages and splits (from the local copy under data.path, else from the hub), and
    where they came from."""
    langs = wanted_languages(info, data)
    check_train_pool(info, langs, data)
    splits = own_splits(data)
    if data.path:
        root = Path(data.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path {data.path!r} is not a directory; {info.name} expects {info.offline_layout}.")
        fetch = functools.partial(local_table, info, root, {})
        frame = finish(info, read_benchmark(langs, splits, fetch), data, f"{info.name} files under {data.path!r}")
        return frame, Provenance(info.name, str(root.resolve()), "local")
    reader = HubReader(info)
    frame = finish(info, read_benchmark(langs, splits, reader), data, f"{info.name} from the hub ({info.hub_id})")
    return frame, Provenance(info.name, info.hub_id, reader.revision or "unknown", reader.ref)


def load_benchmark(info: BenchmarkInfo, data: DataConfig) -> pd.DataFrame:
    """A benchmark's asked languages and splits: from the local copy under data.path, else from the hub."""
    return load_benchmark_with_provenance(info, data)[0]


# --------------------------------------------------------------------------------------------- registration


def _register(name: str) -> DataSource:
    info = BENCHMARKS[name]

    def load(data: DataConfig) -> pd.DataFrame:
        return load_benchmark(info, data)

    load.__name__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"Load {name} ({info.hub_id} on the hub, or a local copy laid out as {info.offline_layout})."
    return DATA_SOURCES.register(name)(load)


load_xnli = _register("xnli")
load_xglue_nc = _register("xglue-nc")
load_masakhanews = _register("masakhanews")
load_sib200 = _register("sib200")
