"""`mfpt prepare`: one universal-schema file per language plus a data card, from a benchmark or a user's file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from conftest import BENCHMARK_FIXTURES as FIXTURES
from conftest import TINY_DATA, FakeHub, hub_cases

from mfpt.cli import main
from mfpt.config import DataConfig, load_config
from mfpt.data.benchmarks import BENCHMARKS
from mfpt.data.clients import load_source, prepare


def run_prepare(*args: str) -> int:
    return main(["prepare", *args])


def card_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "datacard.json").read_text(encoding="utf-8"))


def records(frame: pd.DataFrame) -> list[tuple]:
    """Rows as sorted tuples of the universal-schema columns, so two frames compare regardless of order."""
    columns = [c for c in ("text", "text_pair", "label", "lang", "split") if c in frame.columns]
    return sorted(map(tuple, frame[columns].astype(str).to_numpy().tolist()))


def test_benchmark_copy_becomes_one_file_per_language_that_loads_back(tmp_path: Path) -> None:
    source = FIXTURES / "sib200-hub"
    out = tmp_path / "prepared"
    assert run_prepare("sib200", "--path", str(source), "--out", str(out), "--languages", "eng_Latn", "swh_Latn") == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "datacard.json", "eng.jsonl", "swh.jsonl"]
    benchmark = load_source(DataConfig(source="sib200", path=str(source), languages=("eng_Latn", "swh_Latn")))
    for lang in ("eng", "swh"):
        # What a site does with its file: data.source = "files", data.path = that file.
        site = load_source(DataConfig(source="files", path=str(out / f"{lang}.jsonl")))
        assert records(site) == records(benchmark[benchmark["lang"] == lang])
        assert list(site.columns) == ["text", "label", "lang", "split"]


def test_data_card_records_source_revision_counts_and_checksums(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare("sib200", "--path", str(FIXTURES / "sib200"), "--out", str(out),
                       "--languages", "swh,zho_Hant") == 0  # commas work as well as spaces
    card = card_of(out)
    assert card["source"] == {"benchmark": "sib200", "path": str((FIXTURES / "sib200").resolve())}
    assert card["revision"] == "local" and card["train_pool"] == "train"
    assert card["labels"] == list(BENCHMARKS["sib200"].labels)  # the benchmark's order, ready for data.labels
    assert list(card["languages"]) == ["swh", "cmn_Hant"]
    for lang, entry in card["languages"].items():
        written = pd.read_json(out / entry["file"], lines=True, dtype=False)
        assert entry["sha256"] == hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
        assert entry["rows"] == len(written)
        for split, counts in entry["splits"].items():
            rows = written[written["split"] == split]
            assert counts["rows"] == len(rows)
            assert counts["labels"] == rows["label"].value_counts().sort_index().to_dict()
        assert list(entry["splits"]) == ["train", "validation", "test"]
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert card["languages"]["swh"]["sha256"] in readme and "revision: local" in readme
    assert "lang='swh' data-path='/data/swh.jsonl'" in readme


def test_prepared_file_serves_a_site_config(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare("masakhanews", "--path", str(FIXTURES / "masakhanews-github"), "--out", str(out),
                       "--languages", "hau,swa") == 0
    # The site's view: its own file only, the labels the server declares.
    labels = ["business", "entertainment", "health", "politics", "religion", "sports", "technology"]
    cfg = load_config(None, {"data.path": str(out / "hau.jsonl"), "data.languages": ["hau"], "data.labels": labels})
    prepared = prepare(cfg)
    assert prepared.languages == ("hau",)
    assert len(prepared.language_rows("hau", "train")) == card_of(out)["languages"]["hau"]["splits"]["train"]["rows"]


def test_hub_benchmark_card_names_the_hub_id_and_the_commit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mfpt.data.benchmarks as benchmarks

    features, rows, _, _ = hub_cases()["xglue-nc"]
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(features, rows))
    monkeypatch.setattr(benchmarks, "hub_revision", lambda hub_id, ref: "0123abcd")
    out = tmp_path / "xglue"
    assert run_prepare("xglue-nc", "--out", str(out), "--languages", "de", "--train-pool", "validation") == 0
    card = card_of(out)
    assert card["source"] == {"benchmark": "xglue-nc", "hub_id": "microsoft/xglue"}
    assert (card["revision"], card["hub_ref"], card["train_pool"]) == ("0123abcd", "main", "validation")
    assert {split: c["rows"] for split, c in card["languages"]["deu"]["splits"].items()} == {"train": 2, "test": 2}


def test_xglue_script_repository_stops_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    features, rows, _, _ = hub_cases()["xglue-nc"]
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(features, rows, script_based=True, parquet_export=False))
    assert run_prepare("xglue-nc", "--out", str(tmp_path / "x"), "--languages", "de", "--train-pool", "validation") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'XGLUE Data with Test'" in err and "data.path" in err
    assert not (tmp_path / "x").exists()


def test_english_only_training_names_the_prepare_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_prepare("xglue-nc", "--path", str(FIXTURES / "xglue-nc"), "--out", str(tmp_path / "x"),
                       "--languages", "de") == 2
    assert "--train-pool validation" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_own_file_is_split_by_language(tmp_path: Path, suffix: str) -> None:
    frame = pd.read_json(TINY_DATA, lines=True, dtype=False).assign(note="site-internal id")
    source = tmp_path / f"mine{suffix}"
    {".jsonl": lambda p: frame.to_json(p, orient="records", lines=True, force_ascii=False),
     ".csv": lambda p: frame.to_csv(p, index=False),
     ".parquet": lambda p: frame.to_parquet(p)}[suffix](source)
    out = tmp_path / "sites"
    assert run_prepare("files", "--path", str(source), "--out", str(out), "--languages", "sw", "hau") == 0
    card = card_of(out)
    assert list(card["languages"]) == ["swh", "hau"]
    assert card["source"] == {"benchmark": "files", "path": str(source.resolve()),
                              "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert card["columns"] == ["text", "label", "lang", "split"]  # the extra 'note' column stays at home
    assert card["labels"] == ["health", "politics", "sport"]
    for lang in ("swh", "hau"):
        site = load_source(DataConfig(source="files", path=str(out / f"{lang}.jsonl")))
        assert records(site) == records(frame[frame["lang"] == lang])
    assert not (out / "eng.jsonl").exists()


def test_own_file_without_split_is_counted_as_unsplit(tmp_path: Path) -> None:
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2], "lang": "yo"}) + "\n"
                              for i in range(5)), encoding="utf-8")
    assert run_prepare("files", "--path", str(source), "--out", str(tmp_path / "o")) == 0
    assert card_of(tmp_path / "o")["languages"]["yor"]["splits"] == {"unsplit": {"rows": 5, "labels": {"a": 3, "b": 2}}}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sib-200", "--path", "x"], "Unknown benchmark 'sib-200'. Did you mean 'sib200'"),
        (["files"], "needs --path"),
        (["files", "--path", "/nonexistent/mine.jsonl"], "/nonexistent/mine.jsonl"),
        (["files", "--path", str(TINY_DATA), "--languages", "fra"], "Language(s) ['fra'] are not in"),
        (["files", "--path", str(TINY_DATA), "--languages", "xx1"], "'xx1'"),
        (["sib200", "--path", str(FIXTURES / "sib200"), "--languages", "nav"], "sib200 has no language 'nav'"),
        (["sib200", "--path", "/nonexistent/sib"], "data.path '/nonexistent/sib' is not a directory"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                args: list[str], expected: str) -> None:
    assert run_prepare(*args, "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err


def test_missing_column_in_own_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "mine.csv"
    source.write_text("text,lang\nhello,en\n", encoding="utf-8")
    assert run_prepare("files", "--path", str(source), "--out", str(tmp_path / "o")) == 2
    assert "lacks column(s) 'label'" in capsys.readouterr().err


def test_empty_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("text,label,lang\n", encoding="utf-8")
    assert run_prepare("files", "--path", str(source), "--out", str(tmp_path / "o")) == 2
    assert "Nothing to write" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_stale_language_files_in_out_are_refused_and_reruns_overwrite(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    args = ("files", "--path", str(TINY_DATA), "--out", str(out))
    assert run_prepare(*args, "--languages", "eng") == 0
    first = (out / "eng.jsonl").read_bytes()
    assert run_prepare(*args, "--languages", "eng") == 0  # same languages: rewritten in place
    assert (out / "eng.jsonl").read_bytes() == first
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temp file left behind
    assert run_prepare(*args, "--languages", "swh") == 2
    assert "already holds eng.jsonl" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken.jsonl"
    out.write_text("keep me\n", encoding="utf-8")
    assert run_prepare("files", "--path", str(TINY_DATA), "--out", str(out)) == 2
    assert "is a file" in capsys.readouterr().err and out.read_text(encoding="utf-8") == "keep me\n"
