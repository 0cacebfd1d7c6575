"""Snapshot the lab's records on many configurations, and compare two snapshots bit for bit.

    .venv/bin/python tools/lab_records.py save /tmp/before.pkl     # on the code before a change
    .venv/bin/python tools/lab_records.py save /tmp/after.pkl      # and after it
    .venv/bin/python tools/lab_records.py compare /tmp/before.pkl /tmp/after.pkl

A speed-up must not change a number silently: every column of every History and the trained parameters of
about fifty runs (every preset on 8 seeds and on 1, GTPO's default filter, 64 seeds, a custom objective,
fixed sampling, InstrumentedAdamW, the three template modes on tabular and GRU policies, the tiny GPT-2)
must be equal, NaN for NaN. ``compare`` exits with status 1 on any difference. About two minutes on one CPU.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

import numpy as np
import torch

import companion as cp
from companion import lab


class _Plain:
    """A hand-written clipped objective: the lab's per-seed path for objectives that are not cp.Objective."""

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        r = rewards.view(-1, group_size)
        return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)

    def loss(self, lp, old, adv, mask, ref_logprobs=None):
        ratio = torch.exp(lp - old)
        a = adv.unsqueeze(-1)
        surrogate = torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
        out = type("Out", (), {})()
        out.loss = -((surrogate * mask).sum(-1) / mask.sum(-1)).mean()
        return out


def _run(records: dict[str, Any], key: str, policy: torch.nn.Module, task: cp.Task, objective: Any,
         **options: Any) -> None:
    options = {"steps": 8, "group_size": 4, "prompts_per_step": 3, "inner_steps": 2, "lr": 0.1,
               "device": "cpu", "progress": False, **options}
    history = lab.train(policy, task, objective, **options)
    records[key] = {name: history[name].copy() for name in history}
    records[key]["__parameters"] = torch.cat([p.detach().flatten() for p in policy.parameters()]).numpy()


def snapshot() -> dict[str, Any]:
    torch.set_num_threads(1)
    records: dict[str, Any] = {}
    task = cp.make_task("add", base=3, length="short")
    for name in cp.PRESETS:
        objective = cp.Objective.preset(name, **({"gtpo_entropy_threshold": None} if name == "gtpo" else {}))
        _run(records, f"add/{name}/8 seeds", cp.TabularPolicy.for_task(task, num_seeds=8), task, objective,
             group_size=8, prompts_per_step=4)
        _run(records, f"add/{name}/1 seed", cp.TabularPolicy.for_task(task, init_scale=0.5, seed=3), task,
             objective)
    _run(records, "add/gtpo, entropy filter", cp.TabularPolicy.for_task(task, num_seeds=4), task,
         cp.Objective.preset("gtpo"))
    pick = cp.make_task("pick")
    _run(records, "pick/64 seeds", cp.TabularPolicy.for_task(pick, num_seeds=64), pick,
         cp.Objective.preset("grpo"), steps=30, group_size=8, prompts_per_step=4, inner_steps=1)
    _run(records, "pick/custom objective", cp.TabularPolicy.for_task(pick, num_seeds=5), pick, _Plain())
    _run(records, "pick/fixed sampling", cp.TabularPolicy.for_task(pick, num_seeds=3), pick,
         cp.Objective.preset("dapo"), sampling="fixed")
    _run(records, "pick/InstrumentedAdamW", cp.TabularPolicy.for_task(pick, num_seeds=3), pick,
         cp.Objective.preset("grpo"), optimizer=lambda p: cp.InstrumentedAdamW(p, lr=0.1, diagnostics="full"))
    for mode in ("forced", "shared", "sampled"):
        template = cp.make_task("pick", template="##", template_mode=mode, length="short")
        policy = cp.TabularPolicy.for_task(template, num_seeds=4, dtype=torch.float64, init_scale=0.3)
        _run(records, f"template {mode}/tabular", policy, template, cp.Objective.preset("grpo_r1"))
        _run(records, f"template {mode}/gru", cp.GRUPolicy.for_task(template, seed=1), template,
             cp.Objective.preset("dr_grpo"), lr=0.01)
    _run(records, "gru/pick", cp.GRUPolicy.for_task(pick, seed=0), pick, cp.Objective.preset("grpo"), lr=0.01)
    long = cp.make_task("pick", max_new_tokens=16, min_new_tokens=16)
    _run(records, "gpt2/16 tokens", cp.TinyGPT2Policy.for_task(long, seed=0), long,
         cp.Objective.preset("grpo"), steps=3, lr=1e-3, group_size=8, prompts_per_step=4)
    _run(records, "gpt2/pick", cp.TinyGPT2Policy.for_task(pick, seed=0), pick, cp.Objective.preset("grpo_r1"),
         steps=4, lr=3e-3)
    shared = cp.make_task("pick", template="##", template_mode="shared")
    _run(records, "gpt2/shared template", cp.TinyGPT2Policy.for_task(shared, seed=1), shared,
         cp.Objective.preset("gtpo", gtpo_entropy_threshold=None), steps=3, lr=3e-3)
    return records


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Every difference, as a line; empty when the snapshots are equal bit for bit."""
    problems = []
    for key, columns in before.items():
        if key not in after:
            problems.append(f"{key}: missing")
            continue
        for name, values in columns.items():
            other = after[key].get(name)
            if other is None:
                problems.append(f"{key}: column {name} missing")
            elif values.shape != other.shape or not np.array_equal(values, other, equal_nan=True):
                gap = np.nanmax(np.abs(values - other)) if values.shape == other.shape else "shape"
                problems.append(f"{key}: {name} differs (largest gap {gap})")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "save":
        with open(argv[1], "wb") as file:
            pickle.dump(snapshot(), file)
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        snapshots = []
        for path in argv[1:]:
            with open(path, "rb") as file:
                snapshots.append(pickle.load(file))  # your own snapshots only: pickle runs code
        problems = compare(*snapshots)
        print("\n".join(problems) or f"equal: {len(snapshots[0])} runs, bit for bit")
        return 1 if problems else 0
    raise SystemExit(__doc__)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
