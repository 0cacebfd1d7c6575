"""Lab benchmark: one GRPO step of the tiny GPT-2, and a 64-seed tabular run. Prints `name value unit`.

- ``lab_gpt2_step_median``: median wall time of ``cp.lab.train(steps=1)`` with the tiny GPT-2 (2 layers,
  64 dims), 4 prompts x 8 completions x 16 new tokens (EOS forbidden, so every completion has 16), one
  inner step, GRPO objective, AdamW, one CPU thread. It includes the per-call set-up (frozen reference
  copy, optimizer). Target <= 100 ms.
- ``lab_gpt2_step_in_run``: the same step, averaged over a 20-step run (no per-call set-up).
- ``lab_tabular_64_seeds_200_steps``: wall time of one ``train`` call, 64 seeds x 200 outer steps (pick,
  8 x 4 per step, one inner step), after one warm-up call. Target <= 2 s.
"""

import statistics
import time

import torch

import companion as cp
from companion import lab

REPEATS = 15


def _gpt2_step_times(objective) -> tuple[float, float]:
    task = cp.make_task("pick", max_new_tokens=16, min_new_tokens=16)
    policy = cp.TinyGPT2Policy.for_task(task, n_layer=2, n_embd=64, seed=0)
    kwargs = dict(group_size=8, prompts_per_step=4, inner_steps=1, lr=1e-3, device="cpu", progress=False)
    lab.train(policy, task, objective, steps=2, **kwargs)  # warm-up
    times = []
    for i in range(REPEATS):
        start = time.perf_counter()
        lab.train(policy, task, objective, steps=1, seed=i, **kwargs)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    lab.train(policy, task, objective, steps=20, **kwargs)
    return statistics.median(times), (time.perf_counter() - start) / 20


def _tabular_run_time(objective) -> float:
    task = cp.make_task("pick")
    kwargs = dict(group_size=8, prompts_per_step=4, inner_steps=1, lr=0.1, device="cpu", progress=False)
    lab.train(cp.TabularPolicy.for_task(task, num_seeds=64), task, objective, steps=5, **kwargs)  # warm-up
    policy = cp.TabularPolicy.for_task(task, num_seeds=64)
    start = time.perf_counter()
    lab.train(policy, task, objective, steps=200, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    objective = cp.Objective.preset("grpo")
    median, in_run = _gpt2_step_times(objective)
    print(f"lab_gpt2_step_median {median * 1e3:.1f} ms")
    print(f"lab_gpt2_step_in_run {in_run * 1e3:.1f} ms")
    print(f"lab_gpt2_step_target_ratio {median / 0.100:.2f} x")
    tabular = _tabular_run_time(objective)
    print(f"lab_tabular_64_seeds_200_steps {tabular:.2f} s")
    print(f"lab_tabular_target_ratio {tabular / 2.0:.2f} x")


if __name__ == "__main__":
    main()
