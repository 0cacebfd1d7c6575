"""CITATION.cff: valid against the official Citation File Format 1.2.0 schema, and consistent with the book.

The schema is vendored in tests/data/ (source and licence in tests/data/README.md), so the check needs no
network; it is what ``cffconvert --validate`` checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "tests" / "data" / "cff-1.2.0-schema.json"
SCHEMA_SHA256 = "0b8d22140da702d766df318dcff3a91af2f39521298dcf36d76315fd99cc169b"  # tag 1.2.0, unchanged
PAPER_KEY = "fontana2026hidden"


class _CffLoader(yaml.SafeLoader):
    """YAML as CFF tools read it: dates stay strings (the schema checks them with format "date")."""


_CffLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_cff(text: str) -> dict:
    return yaml.load(text, Loader=_CffLoader)  # a SafeLoader subclass


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def cff() -> dict:
    return load_cff((ROOT / "CITATION.cff").read_text())


def errors(validator, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def bib_entry(key: str) -> str:
    text = (ROOT / "book" / "references.bib").read_text()
    match = re.search(rf"^@\w+\{{{key},.*?^\}}$", text, re.M | re.S)
    assert match, f"{key} is not in book/references.bib"
    return match.group(0)


def test_the_vendored_schema_is_the_official_one():
    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA_PATH.read_text())["$id"] == "https://citation-file-format.github.io/1.2.0/schema.json"


def test_citation_file_is_valid_cff_1_2_0(validator, cff):
    assert cff["cff-version"] == "1.2.0"
    assert errors(validator, cff) == []


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.pop("authors"), "'authors' is a required property"),
    (lambda d: d.update(license="MIT-ish"), "license"),
    (lambda d: d["references"][0].update(month=13), "references/0/month"),
    (lambda d: d.update(**{"date-released": "30 November 2026"}), "date-released"),
    (lambda d: d.update(colour="blue"), "Additional properties"),
])
def test_the_schema_check_catches_broken_files(validator, cff, change, expected):
    broken = copy.deepcopy(cff)
    change(broken)
    found = errors(validator, broken)
    assert found and any(expected in e for e in found), found


def test_citation_names_the_book_its_licences_and_the_paper(cff):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cff["title"] == config["title"]
    assert [a["name"] for a in cff["authors"]] == [config["author"]]
    assert set(cff["license"]) == {"MIT", "CC-BY-4.0"}
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    cc_by = "Creative Commons Attribution 4.0 International Public License"
    assert cc_by in (ROOT / "LICENSE-CONTENT").read_text()
    (paper,) = [r for r in cff["references"] if "Hidden Objective Biases" in r["title"]]
    bib = bib_entry(PAPER_KEY)
    assert paper["title"] in bib
    bib_authors = re.search(r"author\s*=\s*\{(.*?)\},", bib).group(1)
    names = [f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]]
    assert names == bib_authors.split(" and "), "the same authors in the same order as book/references.bib"
    assert f"{paper['start']}--{paper['end']}" in bib and str(paper["year"]) in bib
    assert paper["url"] in bib
    assert any(i["value"] == "arXiv:2601.05002" for i in paper["identifiers"])


def test_preface_says_how_to_cite_the_book_and_the_paper(cff):
    preface = (ROOT / "book" / "preface.md").read_text()
    section = preface.split("## How to cite", 1)
    assert len(section) == 2, "the preface needs a '## How to cite' section"
    text = section[1].split("\n## ", 1)[0]
    assert bib_entry(PAPER_KEY) in text, "the paper's BibTeX entry must be the one of book/references.bib"
    assert "CITATION.cff" in text
    book_entry = re.search(r"^@\w+\{companion2026,.*?^\}$", text, re.M | re.S)
    assert book_entry, "a BibTeX entry for the book, key companion2026"
    assert f"title        = {{{cff['title']}}}" in book_entry.group(0)
