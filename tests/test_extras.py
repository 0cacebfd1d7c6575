"""Installed with torch and numpy only, companion works, and each optional part names the extra it needs.

A missing library is simulated in a fresh interpreter with ``sys.modules[name] = None`` (any import of it
then raises ModuleNotFoundError), so the test needs no second environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from companion._extras import EXTRAS, MissingExtraError, require


def run_without(modules: tuple[str, ...], code: str) -> str:
    block = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    program = f"import sys\n{block}{code}"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


CATCH = ("try:\n    {}\nexcept ModuleNotFoundError as error:\n"
         "    print(type(error).__name__, '|', error)\n")


def test_the_core_works_with_torch_and_numpy_only():
    out = run_without(("transformers", "tokenizers", "matplotlib", "ipywidgets", "tqdm", "trl", "yaml"), (
        "import torch, companion as cp\n"
        "task = cp.make_task('pick')\n"
        "policy = cp.TabularPolicy.for_task(task, num_seeds=2)\n"
        "h = cp.lab.train(policy, task, cp.Objective.preset('grpo'), steps=2, progress=False)\n"
        "opt = cp.InstrumentedAdamW([torch.zeros(3, requires_grad=True)])\n"
        "report = cp.audit.audit({'loss_type': 'grpo'})\n"
        "print(len(h['reward']), sorted(report.exposed))\n"))
    assert out.strip() == "2 ['ch03', 'ch06']"


@pytest.mark.parametrize(("missing", "code", "extra"), [
    (("transformers",), "cp.TinyGPT2Policy.for_task(cp.make_task('pick'))", "lab"),
    (("tokenizers",), "cp.TinyGPT2Policy.for_task(cp.make_task('pick'))", "lab"),
    (("matplotlib",), "cp.viz.use_style()", "viz"),
    (("trl",), "import companion.integrations.trl", "trl"),
    (("yaml",), "cp.audit.read_file(__import__('pathlib').Path('tests/audit_configs/verl_defaults.yaml'))",
     "audit"),
])
def test_missing_extras_are_named(missing, code, extra):
    out = run_without(missing, "import companion as cp\n" + CATCH.format(code))
    name, _, message = out.partition(" | ")
    assert name == "MissingExtraError", out
    assert f'pip install "companion[{extra}]"' in message and repr(missing[0]) in message


def test_require_passes_for_installed_modules_and_rejects_unknown_extras():
    require("lab", "torch")
    with pytest.raises(ValueError, match="unknown extra"):
        require("gpu")
    assert issubclass(MissingExtraError, ModuleNotFoundError)
    assert set(EXTRAS) == {"lab", "viz", "trl", "audit"}
