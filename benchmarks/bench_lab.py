"""Lab benchmark: ``cp.lab.train`` against the same GRPO loop written out by hand (benchmarks/hand_written.py,
which reproduces the lab's records bit for bit: tests/test_benchmarks.py).

- ``lab_tabular``: 64 seeds x 200 outer steps of the tabular policy on ``pick`` (G = 8, B = 4, mu = 1, GRPO,
  AdamW lr 0.1), one ``train`` call against one run of the hand loop. Two pairs: the default (per-seed
  random streams, torch's AdamW numbers) and the fast choices (``streams="batched"``, fused AdamW), each
  against the hand loop that makes the same choices.
- ``lab_gpt2``: GRPO steps of the tiny GPT-2 (2 layers, 64 dims), 4 prompts x 8 completions x 16 new tokens
  (EOS forbidden, so every completion has 16), mu = 1, AdamW lr 1e-3: a ``train`` call of 8 steps (its
  set-up included) with ``kl_ref=False`` against 8 steps of the hand loop, which keeps no reference model
  either; ``lab_gpt2_kl_ref`` is the default call, whose kl_ref record costs pi_ref's forward pass (no
  target: more work than the baseline). Per step.
"""

from __future__ import annotations

import torch
from hand_written import GPT2Loop, tabular_grpo
from results import Row
from timing import interleaved

import companion as cp
from companion import lab


def _tabular_rows(quick: bool) -> list[Row]:
    seeds, steps, rounds = (8, 20, 2) if quick else (64, 200, 5)
    task = cp.make_task("pick")
    grpo = cp.Objective.preset("grpo")
    kwargs = dict(group_size=8, prompts_per_step=4, inner_steps=1, lr=0.1, device="cpu", progress=False)

    def ours(fast: bool) -> None:
        policy = cp.TabularPolicy.for_task(task, num_seeds=seeds)
        optimizer = (lambda p: torch.optim.AdamW(p, lr=0.1, fused=True)) if fast else None
        lab.train(policy, task, grpo, steps=steps, optimizer=optimizer,
                  streams="batched" if fast else "per_seed", **kwargs)

    def theirs(fast: bool) -> None:
        tabular_grpo(task, seeds, steps, streams="batched" if fast else "per_seed", fused=fast)

    times = interleaved({"lab": lambda: ours(False), "hand": lambda: theirs(False),
                         "lab_fast": lambda: ours(True), "hand_fast": lambda: theirs(True)}, rounds)
    what = f"tabular, {seeds} seeds x {steps} steps (GRPO, G=8, B=4, mu=1, AdamW)"
    return [Row("lab_tabular", what + ", per-seed streams, torch's AdamW numbers", times["lab"],
                times["hand"], 1.5, "s"),
            Row("lab_tabular_fast", what + ", batched streams, fused AdamW", times["lab_fast"],
                times["hand_fast"], 1.5, "s")]


def _gpt2_rows(quick: bool) -> list[Row]:
    steps, rounds = (2, 2) if quick else (8, 5)
    task = cp.make_task("pick", max_new_tokens=16, min_new_tokens=16)
    grpo = cp.Objective.preset("grpo")

    def ours(kl_ref: bool) -> None:
        policy = cp.TinyGPT2Policy.for_task(task, seed=0)
        lab.train(policy, task, grpo, steps=steps, group_size=8, prompts_per_step=4, lr=1e-3, device="cpu",
                  progress=False, kl_ref=kl_ref)

    def theirs() -> None:
        loop = GPT2Loop(cp.TinyGPT2Policy.for_task(task, seed=0), task, group_size=8, prompts_per_step=4,
                        lr=1e-3)
        for _ in range(steps):
            loop.step()

    variants = {"lab": lambda: ours(False), "hand": theirs, "lab_kl_ref": lambda: ours(True)}
    times = interleaved(variants, rounds)
    per_step = {k: type(t)(t.cpu / steps, t.wall / steps) for k, t in times.items()}
    what = f"tiny GPT-2 GRPO step (4 x 8, 16 tokens), in a {steps}-step run"
    return [Row("lab_gpt2", what + ", kl_ref=False (no pi_ref, as the hand loop)", per_step["lab"],
                per_step["hand"], 1.15, "ms"),
            Row("lab_gpt2_kl_ref", what + ", the default: pi_ref's forward pass for the kl_ref record",
                per_step["lab_kl_ref"], per_step["hand"], None, "ms")]


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    return _tabular_rows(quick) + _gpt2_rows(quick)
