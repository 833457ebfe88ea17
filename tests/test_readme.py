"""The documentation stays true: the README's Python example runs, and the docs' links resolve.

- The first ```python block of README.md runs in a fresh interpreter and prints the perplexities it
  promises (the example loads the default model and calibrates on 8 windows: about a minute on
  2 CPU cores once the model is converted).
- Every relative link and image in README.md and docs/*.md points to a file inside this repository,
  and every #anchor to a heading of its target.
- No doc points at the folder outside the repository that holds the official run (`../shared`),
  except in a command line that takes it as an argument.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
EXAMPLE_TIMEOUT_S = 900  # a fresh cache converts the model and tokenises the corpus first

FENCE = re.compile(r"^[ \t]*```([^\n`]*)\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)  # also inside list items
INLINE_CODE = re.compile(r"`[^`]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
OUTSIDE = ("../shared", "shared/reference")
COMMAND_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_STARTS = ("python ", "ppcore ", ".venv/bin/", "make ", "PYTHONPATH=")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def first_python_block(text: str) -> str:
    for m in FENCE.finditer(text):
        if m.group(1).strip() == "python":
            return m.group(2)
    raise AssertionError("README.md has no ```python block")


def _prose(text: str) -> str:
    """The text outside fenced blocks and inline code: where links are links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_anchors(text: str) -> set[str]:
    """Anchors GitHub gives the headings of a Markdown page (lowercase, punctuation dropped, spaces
    to hyphens, -1, -2 ... for repeats)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for m in HEADING.finditer(FENCE.sub("", text)):
        title = m.group(1).replace("`", "")
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    problems = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if ROOT not in (dest, *dest.parents):
            problems.append(f"{_rel(page)}: {target} points outside the repository")
        elif not dest.exists():
            problems.append(f"{_rel(page)}: {target} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{_rel(page)}: {target} has no heading #{anchor}")
    return problems


def _blank(code: str) -> str:
    """Code left out of a check, its line breaks kept so that line numbers still match the page."""
    return "\n" * code.count("\n")


def outside_mentions(page: Path) -> list[str]:
    """Mentions of the official run's folder outside a command line."""
    text = page.read_text(encoding="utf-8")
    text = FENCE.sub(lambda m: _blank(m.group(0)) if m.group(1).strip() in COMMAND_LANGS else m.group(0), text)
    text = INLINE_CODE.sub(
        lambda m: _blank(m.group(0)) if m.group(0).strip("`").startswith(COMMAND_STARTS) else m.group(0), text)
    return [f"{_rel(page)} line {text[:i].count(chr(10)) + 1}: {word}"
            for word in OUTSIDE for i in (m.start() for m in re.finditer(re.escape(word), text))]


def test_readme_python_example_runs() -> None:
    code = first_python_block(README.read_text(encoding="utf-8"))
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              timeout=EXAMPLE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the README's Python example ran past {EXAMPLE_TIMEOUT_S} s")
    assert done.returncode == 0, f"the README's Python example failed:\n{done.stderr[-4000:]}"
    m = re.search(r"perplexity: dense ([0-9.]+), Probe Pruning at 40% ([0-9.]+)", done.stdout)
    assert m, f"the example printed no perplexities:\n{done.stdout}"
    dense, pruned = float(m.group(1)), float(m.group(2))
    assert 1 < dense < pruned < 1e4, (dense, pruned)
    assert "layer 5 keeps query heads" in done.stdout


def test_docs_exist() -> None:
    names = {p.name for p in DOCS}
    expected = {"algorithm.md", "results.md", "reliability.md", "run-record.md", "multi-device.md", "changes.md"}
    assert expected <= names, f"missing from docs/: {sorted(expected - names)}"


def test_relative_links_resolve() -> None:
    problems = [p for page in PAGES for p in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_no_doc_points_outside_the_repository() -> None:
    problems = [p for page in PAGES for p in outside_mentions(page)]
    assert not problems, "the official run's folder mentioned outside a command line:\n" + "\n".join(problems)


def test_anchor_rule_matches_github() -> None:
    """The slug rule the link check relies on, on headings of the kinds these docs use."""
    page = "# A\n## 8.1b Metric and allocation\n## The `prr` column\n## Repeat\n## Repeat\n```\n## not a heading\n```\n"
    assert github_anchors(page) == {"a", "81b-metric-and-allocation", "the-prr-column", "repeat", "repeat-1"}
