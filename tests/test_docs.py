"""The README and the user guide tell the truth: every link resolves, every `mfpt` command parses and its config
validates, the quick commands run as written, the key reference is the one `mfpt keys` prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mfpt.cli import build_parser, main
from mfpt.config import describe_markdown, load_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "configs" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Placeholders a command line may use instead of a real value; such a line documents a shape, it is not run.
PLACEHOLDER = re.compile(r"\b(CONFIG|DIR|RUN_DIR|FILE|BENCHMARK|LANG)\b|\[--|\.\.\.")
# Commands quick enough to run here as written (no training): they must exit 0.
QUICK = ("keys", "validate", "distance", "privacy", "data")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lowercase, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not target.startswith(("http", "mailto"))]


def _commands(page: Path) -> list[str]:
    """Every command line in the page's bash code blocks, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                found.append(line)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    for target in _links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: link to {target} goes nowhere"
        if anchor and destination.suffix == ".md":
            assert anchor in _anchors(destination), f"{page.name}: {target} names no heading of {destination.name}"


def test_the_readme_is_short_and_says_nothing_of_how_it_was_built():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\b(issue \d+|as the issue|branch(es)? (was|were) merged)\b", text, re.I), page.name


def _mfpt_commands() -> list[tuple[Path, str]]:
    return [(page, line) for page in PAGES for line in _commands(page)
            if line.startswith("mfpt ") and not PLACEHOLDER.search(line)]


@pytest.mark.parametrize("page, line", _mfpt_commands(), ids=lambda x: x.name if isinstance(x, Path) else x[:60])
def test_every_mfpt_command_parses_and_its_config_validates(page, line, tmp_path):
    """Each documented command as the shell would pass it: the parser accepts it, and its config with every --set
    (and each point of a --grid) validates, so a renamed key or a stale value shows here first."""
    from mfpt.experiments.sweep import parse_grid, parse_seeds, plan_sweep

    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    config = getattr(args, "config", None)
    if config is None or args.command in ("distance", "prepare", "predict", "report", "keys"):
        return
    path = ROOT / config
    assert path.is_file(), f"{page.name}: `{line}` names {config}, which does not exist"
    overrides = list(args.set or [])
    if args.command == "tune":  # as `mfpt tune` loads it: a search never starts from the config's own tuning file
        overrides.append('tuning.file=""')
    if args.command == "sweep":
        plan_sweep(path, parse_grid(args.grid or []), parse_seeds(args.seeds), tmp_path / "sweep", overrides)
    else:
        load_config(path, overrides)


@pytest.mark.parametrize("page, line", [(p, c) for p, c in _mfpt_commands() if c.split()[1] in QUICK],
                         ids=lambda x: x.name if isinstance(x, Path) else x[:60])
def test_the_quick_commands_run_as_written(page, line, monkeypatch, capsys, tmp_path):
    # In a folder that sees the repository's configs and data as a clone does, so that a file a command writes
    # (distance --csv, say) lands in the test's own folder.
    for name in ("configs", "data", "tests", "models"):
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(line)[1:]) == 0, capsys.readouterr().err


def test_every_script_command_names_a_script_and_options_it_has():
    for page in PAGES:
        for line in _commands(page):
            if not line.startswith("python "):
                continue
            words = shlex.split(line)
            if not words[1].endswith(".py"):
                continue
            script = ROOT / words[1]
            assert script.is_file(), f"{page.name}: `{line}` names {words[1]}, which does not exist"
            source = script.read_text(encoding="utf-8")
            for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                assert f'"{flag}"' in source, f"{page.name}: {words[1]} has no option {flag}"


def test_the_key_reference_is_what_mfpt_keys_prints():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    documented = page.split("<!-- keys:start -->\n", 1)[1].split("<!-- keys:end -->", 1)[0]
    assert documented == describe_markdown(), "regenerate it: mfpt keys --markdown"


def test_the_slug_rule_matches_githubs():
    assert _slug("Language distance and gains") == "language-distance-and-gains"
    assert _slug("`[privacy]`: DP, secure aggregation") == "privacy-dp-secure-aggregation"
