"""Publishing: the repository URL setting (buttons shown or hidden), the chapters' Colab install cells,
alt text reaching the built page, the Pages workflow, and the test-only vendored axe-core.

The real-build tests build a one-notebook Sphinx project with the book's theme, myst-nb and the book's
extension, configured from ``_config.yml`` the way Jupyter Book converts it (a few seconds each).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml
from sphinx.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK / "_ext"))

import companion_book  # noqa: E402
import set_repository_url  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
URL = "https://github.com/someone/hidden-biases-book"
ALT = "Reward against outer step for GRPO (solid) and Dr GRPO (dashed): both rise from 0.3 to 0.9"
# the smallest valid PNG: one transparent pixel
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


# ---------------------------------------------------------------------------------------------------------
# the setting


@pytest.mark.parametrize(("raw", "expected"), [
    ("", ""), ("  ", ""),
    (URL, URL), (URL + "/", URL), (URL + ".git", URL), (f"  {URL}  ", URL),
    ("https://gitlab.com/group/book", "https://gitlab.com/group/book"),
])
def test_repository_url_is_normalised(raw, expected):
    assert companion_book.repository_url({companion_book.REPOSITORY_ENV: raw}) == expected


@pytest.mark.parametrize("raw", ["http://github.com/a/b", "https://github.com/only-owner", "github.com/a/b",
                                 "https://github.com/a/b/tree/main", "https://example.org/a/b"])
def test_a_malformed_repository_url_is_an_error_naming_the_setting(raw):
    with pytest.raises(ConfigError, match=companion_book.REPOSITORY_ENV):
        companion_book.repository_url({companion_book.REPOSITORY_ENV: raw})


def theme_options_from_config() -> dict:
    """``html_theme_options`` as Jupyter Book 1 builds them from ``_config.yml`` (jupyter_book/config.py)."""
    options = {"launch_buttons": CONFIG["launch_buttons"]}
    names = {"path_to_book": "path_to_docs", "url": "repository_url", "branch": "repository_branch"}
    options.update({names[k]: v for k, v in CONFIG["repository"].items()})
    return options


def test_config_holds_no_repository_url_and_no_forced_buttons():
    assert "url" not in CONFIG["repository"], "the URL comes from COMPANION_REPOSITORY_URL only"
    assert not {"use_repository_button", "use_issues_button", "use_edit_page_button"} & set(CONFIG["html"])
    assert "example" not in (ROOT / "_config.yml").read_text()


@pytest.mark.parametrize("url", ["", URL, "https://gitlab.com/group/book"])
def test_choose_repository(monkeypatch, url):
    monkeypatch.setenv(companion_book.REPOSITORY_ENV, url)
    config = SimpleNamespace(html_theme_options=theme_options_from_config())
    companion_book.choose_repository(None, config)
    options = config.html_theme_options
    buttons = ("use_repository_button", "use_issues_button")
    if not url:
        assert "repository_url" not in options and "launch_buttons" not in options
        assert not any(options.get(key) for key in buttons)
        return
    assert all(options[key] is True for key in buttons)
    assert options["repository_url"] == url
    assert options["launch_buttons"]["binderhub_url"] == CONFIG["launch_buttons"]["binderhub_url"]
    assert ("colab_url" in options["launch_buttons"]) is url.startswith("https://github.com/")


# ---------------------------------------------------------------------------------------------------------
# the chapters' Colab install cells


def test_every_chapter_installs_companion_from_one_url():
    urls = {path.name: companion_book.notebook_install_urls(path) for path in NOTEBOOKS}
    assert all(len(found) == 1 for found in urls.values()), urls
    assert len({found[0] for found in urls.values()}) == 1, urls


def test_set_repository_url_rewrites_only_the_install_lines(tmp_path):
    chapter = tmp_path / NOTEBOOKS[0].name
    shutil.copy(NOTEBOOKS[0], chapter)
    before = chapter.read_text()
    assert set_repository_url.set_repository_url(URL + ".git", [chapter]) == [chapter]
    after = chapter.read_text()
    assert companion_book.notebook_install_urls(chapter) == [URL]
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and "%pip install" in changed[0][1], changed
    assert set_repository_url.set_repository_url(URL, [chapter]) == [], "a second run changes nothing"


def test_build_warns_when_a_chapter_installs_from_elsewhere(monkeypatch, tmp_path):
    notebook = tmp_path / "chapter.ipynb"
    nbformat.write(chapter_notebook("https://github.com/example/hidden-biases-book"), notebook)
    paths = {"chapter": notebook, "intro": tmp_path / "intro.md"}
    env = SimpleNamespace(found_docs=set(paths), doc2path=paths.__getitem__)
    warnings = []
    record = SimpleNamespace(warning=lambda message, **where: warnings.append(message))
    monkeypatch.setattr(companion_book, "logger", record)
    monkeypatch.delenv(companion_book.REPOSITORY_ENV, raising=False)
    companion_book.check_install_urls(None, env, [])
    assert warnings == []
    monkeypatch.setenv(companion_book.REPOSITORY_ENV, URL)
    companion_book.check_install_urls(None, env, [])
    assert len(warnings) == 1 and "example/hidden-biases-book" in warnings[0] and URL in warnings[0]
    nbformat.write(chapter_notebook(URL), notebook)
    companion_book.check_install_urls(None, env, [])
    assert len(warnings) == 1


# ---------------------------------------------------------------------------------------------------------
# a real build: buttons in both states, and alt text from cell metadata


def chapter_notebook(install_url: str) -> nbformat.NotebookNode:
    figure = nbformat.v4.new_code_cell(
        "plt.plot(steps, reward); plt.show()", execution_count=1,
        metadata={"mystnb": {"image": {"alt": ALT}}},
        outputs=[nbformat.v4.new_output("display_data", data={"image/png": PIXEL, "text/plain": "<Figure>"})])
    plain = nbformat.v4.new_code_cell(
        "plt.show()", execution_count=2,
        outputs=[nbformat.v4.new_output("display_data", data={"image/png": PIXEL, "text/plain": "<Figure>"})])
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A chapter\n\nText."),
        nbformat.v4.new_code_cell(f'%pip install --quiet "git+{install_url}"',
                                  metadata={"tags": ["remove-cell"]}),
        figure, plain])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("publishing") / "src"
    source.mkdir()
    (source / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(BOOK / '_ext')!r})\n"
        "extensions = ['myst_nb', 'sphinx_exercise', 'companion_book']\n"
        "html_theme = 'sphinx_book_theme'\n"
        f"html_theme_options = {theme_options_from_config()!r}\n"
        "nb_execution_mode = 'off'\n"
        "master_doc = 'chapter'\n"
    )
    nbformat.write(chapter_notebook(URL), source / "chapter.ipynb")
    return source


def build(source: Path, out: Path, url: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != companion_book.REPOSITORY_ENV}
    if url is not None:
        env[companion_book.REPOSITORY_ENV] = url
    command = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(source), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return (out / "chapter.html").read_text()


def links(page: str) -> set[str]:
    return {html.unescape(h) for h in re.findall(r'href="([^"]+)"', page)}


@pytest.fixture(scope="module")
def page_without_url(project) -> str:
    return build(project, project.parent / "without-url", None)


@pytest.fixture(scope="module")
def page_with_url(project) -> str:
    return build(project, project.parent / "with-url", URL + "/")


def test_buttons_are_hidden_without_the_setting(page_without_url):
    page = page_without_url
    assert not [h for h in links(page) if "github.com" in h or "colab" in h or "mybinder" in h]
    for label in ("source-repository-button", "source-issues-button", "launch-buttons"):
        assert label not in page
    assert "btn-download-source-button" in page, "the download button stays"


def test_buttons_lead_to_the_repository_with_the_setting(page_with_url):
    found = links(page_with_url)
    branch = CONFIG["repository"]["branch"]
    assert URL in found
    assert any(h.startswith(f"{URL}/issues/new?") for h in found)
    colab = "https://colab.research.google.com/github/someone/hidden-biases-book"
    assert f"{colab}/blob/{branch}/chapter.ipynb" in found
    binder = "https://mybinder.org/v2/gh/someone/hidden-biases-book"
    assert f"{binder}/{branch}?urlpath=lab/tree/chapter.ipynb" in found


def test_alt_text_from_cell_metadata_reaches_the_img_tag(page_without_url):
    images = re.findall(r"<img [^>]*>", page_without_url)
    alts = [html.unescape(m) for tag in images for m in re.findall(r'alt="([^"]*)"', tag)]
    assert ALT in alts, images
    # without the metadata Sphinx falls back to the file name: what every figure showed before
    assert any(alt.endswith(".png") for alt in alts), alts


# ---------------------------------------------------------------------------------------------------------
# the Pages workflow and the vendored axe-core


def test_pages_workflow_builds_the_book_and_deploys_it():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as True
    assert "push" in triggers and "workflow_dispatch" in triggers
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    build_steps = workflow["jobs"]["build"]["steps"]
    text = yaml.safe_dump(build_steps)
    assert "bash .ci/install" in text and "jupyter-book build . -W --keep-going" in text
    assert "actions/upload-pages-artifact" in text and "_build/html" in text
    env = dict(workflow["jobs"]["build"].get("env", {}))
    for step in build_steps:
        env.update(step.get("env", {}))
    assert companion_book.REPOSITORY_ENV in env
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and "github-pages" in str(deploy["environment"])
    assert any("actions/deploy-pages" in str(s.get("uses")) for s in deploy["steps"])


def test_readme_documents_publishing_and_the_setting():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Publishing", 1)[1].split("\n## ", 1)[0]
    assert companion_book.REPOSITORY_ENV in section
    assert "jupyter-book build . -W --keep-going" in section and "_build/html" in section
    assert ".github/workflows/book.yml" in section
    assert "set_repository_url.py" in section


def test_axe_core_is_vendored_for_tests_only():
    vendor = ROOT / "tests" / "_vendor"
    if not (vendor / "VERSIONS").exists():
        pytest.fail("test assets missing: run .ci/vendor-assets (the install step does)")
    assert (vendor / "axe-core" / "axe.min.js").stat().st_size > 100_000
    assert "axe-core@4.14.1" in (vendor / "VERSIONS").read_text()
    assert "axe" not in str(CONFIG["sphinx"]["config"]["html_static_path"])
    assert not list((BOOK / "_vendor").glob("**/axe*.js")), "axe-core must not ship with the book"
