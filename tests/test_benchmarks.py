"""The hand-written baselines of benchmarks/ compute what the lab computes, record for record (so the ratios
in benchmarks/run.py compare the same work), and benchmarks/gpu_check.py runs end to end on the CPU, chapters,
lab timing and every ratio (a quick run; no timing is asserted)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import companion as cp
from companion import lab

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import hand_written  # noqa: E402


@pytest.mark.parametrize(("task_name", "options"), [("pick", {}), ("add", {"base": 3, "length": "short"})])
@pytest.mark.parametrize("fast", [False, True], ids=["per_seed", "batched_fused"])
def test_the_hand_written_tabular_loop_reproduces_the_lab_record_for_record(task_name, options, fast):
    task = cp.make_task(task_name, **options)
    optimizer = (lambda p: torch.optim.AdamW(p, lr=0.1, fused=True)) if fast else None
    h = lab.train(cp.TabularPolicy.for_task(task, num_seeds=5), task, cp.Objective.preset("grpo"), steps=25,
                  group_size=8, prompts_per_step=4, lr=0.1, device="cpu", optimizer=optimizer,
                  streams="batched" if fast else "per_seed")
    by_hand = hand_written.tabular_grpo(task, 5, 25, streams="batched" if fast else "per_seed", fused=fast)
    assert set(by_hand) <= set(h.keys())
    for name, values in by_hand.items():
        np.testing.assert_array_equal(h[name], values.numpy(), err_msg=name)
    assert h["reward"][-5:].mean() > h["reward"][:5].mean()  # it trained


def test_the_hand_written_gpt2_step_samples_and_trains_as_the_lab():
    task = cp.make_task("pick", max_new_tokens=8, min_new_tokens=8)
    ours, theirs = (cp.TinyGPT2Policy.for_task(task, seed=0) for _ in range(2))
    h = lab.train(ours, task, cp.Objective.preset("grpo"), steps=3, group_size=4, prompts_per_step=2, lr=1e-3,
                  device="cpu")
    by_hand = hand_written.GPT2Loop(theirs, task, group_size=4, prompts_per_step=2, lr=1e-3)
    rewards = [by_hand.step(seed=0) for _ in range(3)]
    np.testing.assert_array_equal(h["reward"], np.array(rewards, dtype=np.float32))
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_gpu_check_runs_on_the_cpu_in_a_cheap_mode(tmp_path):
    """benchmarks/gpu_check.py end to end on the CPU (CUDA hidden): a tiny chapter that trains a few steps
    on whatever device the lab picks, one that fails, the lab timing and the quick benchmarks."""
    import nbformat

    good = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import companion as cp\n"
        "task = cp.make_task('pick')\n"
        "h = cp.lab.train(cp.TabularPolicy.for_task(task, num_seeds=2), task, cp.Objective.preset('grpo'),"
        " steps=2)\n"
        "assert h.config['device'] == str(cp.lab.resolve_device())")])
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('broken chapter')")])
    for name, notebook in (("ch98_good.ipynb", good), ("ch99_bad.ipynb", bad)):
        nbformat.write(notebook, tmp_path / name)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(BENCHMARKS.parent)}
    out = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--quick", "--chapters",
                          str(tmp_path / "ch98_good.ipynb"), str(tmp_path / "ch99_bad.ipynb")],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 1, out.stderr  # the broken chapter is reported, and fails the check
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# device: cpu")
    assert any(line.startswith("chapter ch98_good ") and line.endswith(" ok") for line in lines)
    assert any(line.startswith("chapter ch99_bad ") and "broken chapter" in line for line in lines)
    assert any(line.startswith("lab_tabular_8_seeds_10_steps_cpu ") for line in lines)
    # benchmarks/run.py all --quick: its header (baselines with glibc's allocator kept steady), every ratio
    assert any(line.startswith("# ") and line.endswith("allocator: steady (glibc mallopt)") for line in lines)
    ratios = [line for line in lines if "_ratio " in line]
    for name in ("lab_tabular", "lab_tabular_fast", "lab_gpt2", "objective_grpo",
                 "optimizer_full_foreach_False", "optimizer_full_tiny"):
        assert any(line.startswith(f"{name}_ratio ") for line in ratios), (name, out.stdout)
    assert all(float(line.split()[1]) > 0 for line in ratios)
