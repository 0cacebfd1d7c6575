"""The release: the version written in one place, a changelog entry and a citation for it, and a wheel and
an sdist that install into a clean virtualenv with only torch and numpy and pass tests/release_smoke.py.

The build test runs ``python -m build --no-isolation`` (this environment's setuptools, no network), makes a
fresh virtualenv, installs torch (the pin of requirements.txt), numpy and the wheel through pip's usual
configuration, runs the smoke test, then reinstalls from the sdist and runs it again. It takes about a
minute; ``COMPANION_SKIP_RELEASE=1`` skips it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CHANGELOG_HEADING = re.compile(r"^## (\S+) - (unreleased|\d{4}-\d{2}-\d{2})$", re.M)
# what a core install (torch and numpy only) lacks, per entry point of tests/release_smoke.py
MISSING_WITHOUT_EXTRAS = {
    "viz.use_style (viz)": "matplotlib",
    "TinyGPT2Policy (lab)": "transformers",
}
WORKS_WITHOUT_EXTRAS = ("lab.train progress line (lab)",)  # no tqdm: the run goes on without a bar


def package_version() -> str:
    """``companion.__version__``, read without importing the package (as setuptools reads it)."""
    tree = ast.parse((ROOT / "companion" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise AssertionError("companion/__init__.py defines no __version__")


def torch_pin() -> str:
    (pin,) = re.findall(r"^torch==\S+", (ROOT / "requirements.txt").read_text(), re.M)
    return pin


def test_the_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "companion.__version__"}
    version = package_version()
    assert str(Version(version)) == version, "a normalised PEP 440 version"
    writers = [p for p in ROOT.glob("companion/**/*.py") if "__version__ =" in p.read_text()]
    assert writers == [ROOT / "companion" / "__init__.py"]


def test_changelog_and_citation_name_the_current_version():
    version, date = CHANGELOG_HEADING.search((ROOT / "CHANGELOG.md").read_text()).groups()
    assert version == package_version(), "CHANGELOG.md's newest entry is the package's version"
    cff = yaml.load((ROOT / "CITATION.cff").read_text(), Loader=yaml.BaseLoader)  # dates as strings
    assert cff["version"] == version
    if date == "unreleased":
        assert "date-released" not in cff, "an unreleased version has no release date"
    else:
        assert cff["date-released"] == date


def test_licences_are_named_by_the_package_the_readme_and_the_footer():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    licence_classifiers = [c for c in project["classifiers"] if c.startswith("License ::")]
    assert not licence_classifiers, "PEP 639: the licence expression replaces licence classifiers"
    readme = (ROOT / "README.md").read_text()
    footer = yaml.safe_load((ROOT / "_config.yml").read_text())["html"]["extra_footer"]
    for text in (readme, footer):
        assert "MIT" in text and "CC BY 4.0" in text
        assert "LICENSE-CONTENT" in text
    assert "creativecommons.org/licenses/by/4.0" in footer
    assert "vendored" in footer, "the footer keeps its note about the offline assets"


# ---------------------------------------------------------------------------------------------------------
# the built distributions


def build(outdir: Path) -> tuple[Path, Path]:
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = package_version()
    return outdir / f"companion-{version}-py3-none-any.whl", outdir / f"companion-{version}.tar.gz"


def check_wheel(wheel: Path) -> None:
    version = package_version()
    dist_info = f"companion-{version}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "companion").rglob("*.py")}
    assert {n for n in names if not n.startswith(dist_info)} == modules
    assert f"{dist_info}/licenses/LICENSE" in names
    for line in (f"Version: {version}", "License-Expression: MIT", "License-File: LICENSE",
                 "Requires-Dist: torch>=2.4", "Requires-Dist: numpy>=1.26", "Provides-Extra: viz",
                 "Provides-Extra: lab"):
        assert line in metadata.splitlines(), line


def check_sdist(sdist: Path) -> None:
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CITATION.cff",
                 "companion/__init__.py", "companion/objective.py"):
        assert name in names, name
    assert not any(n.startswith(("book/", ".venv", "_build")) for n in names)


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that would put the repository's package on the path."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
            "PYTEST_CURRENT_TEST")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(command: list[str], cwd: Path, timeout: int = 900) -> str:
    result = subprocess.run(command, cwd=cwd, env=clean_environment(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def smoke(python: Path, cwd: Path, venv: Path) -> dict:
    report = json.loads(run([str(python), str(ROOT / "tests" / "release_smoke.py"), package_version()], cwd)
                        .strip().splitlines()[-1])
    assert Path(report["companion_file"]).is_relative_to(venv), report["companion_file"]
    for entry, module in MISSING_WITHOUT_EXTRAS.items():
        probe = report["extras"][entry]
        assert probe["outcome"] == "ImportError" and probe["missing"] == module, (entry, probe)
    for entry in WORKS_WITHOUT_EXTRAS:
        assert report["extras"][entry]["outcome"] == "works", (entry, report["extras"][entry])
    return report


@pytest.mark.skipif(os.environ.get("COMPANION_SKIP_RELEASE") == "1", reason="COMPANION_SKIP_RELEASE=1")
def test_wheel_and_sdist_install_into_a_clean_virtualenv(tmp_path):
    wheel, sdist = build(tmp_path / "dist")
    check_wheel(wheel)
    check_sdist(sdist)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check"]
    run([*pip, torch_pin(), "numpy", str(wheel)], tmp_path)
    installed = run([str(python), "-m", "pip", "list", "--format=freeze"], tmp_path)
    assert not re.search(r"^(matplotlib|transformers|tqdm|ipywidgets)==", installed, re.M | re.I), installed
    report = smoke(python, tmp_path, venv)
    print("\nwithout extras:", json.dumps(report["extras"], indent=1))

    run([*pip, "--no-deps", "--force-reinstall", str(sdist)], tmp_path)
    smoke(python, tmp_path, venv)
