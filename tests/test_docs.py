"""The documentation stays true to the code: the configuration page is generated from the
settings, the README stays short, and the pages it links exist."""

from __future__ import annotations

import re
from pathlib import Path

from vigil.streams.settings import settings_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# [text](target) — relative Markdown links; anchors and web addresses are not files.
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")

REGENERATE = ".venv/bin/python -m vigil.streams.settings > docs/configuration.md"


def _local_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if "://" not in t
            and not t.startswith("mailto:")]


def test_configuration_page_is_generated_from_the_settings():
    page = (DOCS / "configuration.md").read_text()
    assert page == settings_reference(), (
        f"docs/configuration.md is out of date with vigil/streams/settings.py: run {REGENERATE}")


def test_every_setting_and_detector_parameter_is_documented():
    from dataclasses import fields

    from vigil.detectors.online import DetectorParams
    from vigil.streams.settings import Settings

    text = settings_reference()
    for name in Settings.model_fields:
        if name not in ("alerts", "detector"):
            assert f"`VIGIL_{name.upper()}`" in text
    for field in fields(DetectorParams):
        assert f"`VIGIL_DETECTOR__{field.name.upper()}`" in text


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_links_every_docs_page_and_each_link_exists():
    linked = {t for t in _local_links(README) if t.startswith("docs/")}
    assert linked, "the README links no docs/ page"
    missing = sorted(t for t in linked if not (ROOT / t).is_file())
    assert not missing, f"README.md links pages that do not exist: {missing}"
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    unlisted = sorted(pages - linked)
    assert not unlisted, f"docs pages missing from the README's index: {unlisted}"


def test_links_between_docs_pages_resolve():
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in _local_links(page):
            if not (page.parent / target).exists():
                broken.append(f"{page.name} → {target}")
    assert not broken, f"broken links: {broken}"
