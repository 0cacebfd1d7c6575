"""Smoke test of an installed ``companion``, run by tests/test_release.py inside a clean virtualenv.

Usage: ``python release_smoke.py VERSION``. Uses only what a core install has (torch, numpy); prints one
JSON object: where companion was imported from, and what each part that needs an extra says without it.
Exits non-zero (an AssertionError) when the core does not work.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys


def core_checks(expected_version: str) -> dict[str, object]:
    import torch

    import companion as cp

    assert cp.__version__ == expected_version, (cp.__version__, expected_version)
    assert importlib.metadata.version("companion") == expected_version

    torch.manual_seed(0)
    obj = cp.Objective.preset("grpo_r1")
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    adv = obj.advantages(rewards, group_size=4)
    assert torch.allclose(adv.view(2, 4).sum(1), torch.zeros(2), atol=1e-6), adv  # Eq. 2: zero mean per group
    mask = torch.ones(8, 5)
    mask[::2, 3:] = 0
    old_logprobs = -torch.rand(8, 5)
    logprobs = (old_logprobs + 0.05 * torch.randn(8, 5)).requires_grad_()
    out = obj.loss(logprobs, old_logprobs, adv, mask, ref_logprobs=old_logprobs - 0.01)
    out.loss.backward()
    assert torch.isfinite(out.loss) and logprobs.grad is not None and logprobs.grad.abs().sum() > 0

    weight = torch.nn.Parameter(torch.zeros(3))
    opt = cp.InstrumentedAdamW([weight], lr=0.1)
    (weight - torch.tensor([1.0, -1.0, 2.0])).pow(2).sum().backward()
    opt.step()
    first_adam_step = torch.tensor([0.1, -0.1, 0.1])  # lr * sign(gradient), from zero (no decay to apply)
    assert torch.allclose(weight.detach(), first_adam_step, atol=1e-6), weight
    assert len(opt.history) == 1

    assert "dr_grpo" in cp.PRESETS and "Dr GRPO" in cp.methods_table()
    task = cp.make_task("pick")
    policy = cp.TabularPolicy.for_task(task, num_seeds=2)
    history = cp.lab.train(policy, task, obj, steps=3, group_size=4, prompts_per_step=2, progress=False)
    assert len(history.outer("reward")) == 3
    return {"companion_file": cp.__file__, "loss": float(out.loss.detach())}


def without_extra(call) -> dict[str, str]:
    """Run ``call``; it must work or raise ImportError (what a core install without the extra says)."""
    try:
        call()
    except ImportError as error:
        return {"outcome": "ImportError", "message": str(error), "missing": str(error.name)}
    return {"outcome": "works", "message": "", "missing": ""}


def extras_probes() -> dict[str, dict[str, str]]:
    import companion as cp

    task = cp.make_task("pick")
    return {
        "viz.use_style (viz)": without_extra(lambda: cp.viz.use_style()),
        "TinyGPT2Policy (lab)": without_extra(lambda: cp.TinyGPT2Policy.for_task(task)),
        "lab.train progress line (lab)": without_extra(
            lambda: cp.lab.train(cp.TabularPolicy.for_task(task), task, cp.Objective.preset("grpo_r1"),
                                 steps=2, group_size=2, prompts_per_step=1, progress=True)),
    }


if __name__ == "__main__":
    report = core_checks(sys.argv[1])
    report["extras"] = extras_probes()
    print(json.dumps(report))
