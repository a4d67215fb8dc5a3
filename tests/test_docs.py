"""Documents the code and README cite are in the repository (a user has no ../shared)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("*.py", "*.md", "*.toml", "*.yaml")
# a docs path as prose cites it: docs/metrics.md, `docs/dependencies.md`, (../docs/pagellm.md)
DOCS_PATH = re.compile(r"(?<![\w.-])((?:\.\./)?docs/[\w./-]+\.md)")
# where the definitions lived before they were shipped; "spec/metrics.md@1" is an old METRICS_VERSION, a label
OUTSIDE = re.compile(r"(?<![\w])((?:/?shared/|\.\./shared/)?(?:spec/metrics\.md|notes/dependencies\.md))(?!@)")


def _files() -> list[Path]:
    skip = {".git", ".venv", "results", "data", "work", ".ruff_cache", "node_modules"}
    out = []
    for pattern in SCANNED:
        out += [p for p in ROOT.rglob(pattern) if not skip & set(p.relative_to(ROOT).parts[:-1])]
    return sorted(set(out) - {Path(__file__).resolve()})  # this file names the paths it looks for


def test_every_cited_docs_file_exists():
    cited = {}
    for path in _files():
        for match in DOCS_PATH.finditer(path.read_text(errors="replace")):
            target = match.group(1)
            resolved = (path.parent / target) if target.startswith("../") else ROOT / target
            cited.setdefault(str(resolved.resolve().relative_to(ROOT)), []).append(str(path.relative_to(ROOT)))
    assert "docs/metrics.md" in cited and "docs/dependencies.md" in cited, sorted(cited)
    missing = {doc: by for doc, by in cited.items() if not (ROOT / doc).is_file()}
    assert not missing, missing


def test_no_reference_to_documents_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}: {m.group(1)}" for path in _files()
             for m in OUTSIDE.finditer(path.read_text(errors="replace"))]
    assert not found, found


CONFLICT = re.compile(r"^(<{7} \S|>{7} \S|={7}$)", re.M)


def test_no_merge_conflict_markers_were_committed():
    """A merge once landed `<<<<<<< HEAD` ... `>>>>>>> main` in the README's command table."""
    found = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
             for path in _files() for text in [path.read_text(errors="replace")]
             for m in CONFLICT.finditer(text)]
    assert not found, found
