"""Audit: run the libraries' own loss code (from their wheels) against our references. Not a pytest file.

The references in this folder are re-implementations written from reading TRL and verl. This script checks
them against the real code of the pinned releases without installing either library or its heavy
dependencies: it pulls the relevant function definitions out of the unpacked wheels with `ast`, runs them
with small stand-ins for the trainer objects, and compares loss values and gradients to 1e-12.

    pip download trl==1.16.0 verl==0.9.1 --no-deps -d /tmp/refsrc
    (cd /tmp/refsrc && unzip -q -o trl-1.16.0-py3-none-any.whl -d trl && unzip -q -o verl-0.9.1-*.whl -d verl)
    python tests/conformance/check_against_wheels.py /tmp/refsrc

It needs network access once (the download), so it is not part of the offline test suite; the output of
the last run is recorded in SPEC.md.
"""

from __future__ import annotations

import ast
import itertools
import math
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from trl_reference import trl_advantages, trl_loss
from verl_reference import (
    VERL_AGG_MODES,
    VERL_KL_TYPES,
    VERL_POLICY_LOSSES,
    verl_actor_loss,
    verl_advantages,
)

TOL = 1e-12


def function_source(path: Path, name: str, cls: str | None = None) -> str:
    """Source of top-level function `name` (or method `cls.name`), decorators dropped."""
    text = path.read_text()
    tree = ast.parse(text)
    scope = tree.body
    if cls is not None:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    node = next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)
    lines = text.splitlines()
    return textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))


def load_functions(path: Path, names: list[str], namespace: dict[str, Any], cls: str | None = None) -> dict:
    for name in names:
        exec(function_source(path, name, cls), namespace)
    return namespace


def random_case(seed: int, n: int = 8, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).double()
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3 - 0.05
    logp = (old + 0.5 * torch.randn(n, t, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    ref = (old + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    rewards = torch.randint(0, 4, (n,), generator=g).double()
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return logp, old, ref, adv, mask, rewards


def compare(label: str, ours_fn, theirs_fn, logp: torch.Tensor) -> float:
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    la, lb = ours_fn(a), theirs_fn(b)
    la.backward()
    lb.backward()
    err = max(abs(la.item() - lb.item()), (a.grad - b.grad).abs().max().item())
    status = "ok" if err <= TOL else "MISMATCH"
    print(f"{status:8s} {err:.1e}  {label}")
    return err


# --- TRL -------------------------------------------------------------------------------------------------


def trl_namespace(root: Path) -> dict:
    path = root / "trl/trl/trainer/grpo_trainer.py"
    ns: dict[str, Any] = {"torch": torch, "math": math}
    load_functions(root / "trl/trl/trainer/utils.py", ["nanstd", "nanmin", "nanmax"], ns)
    load_functions(path, ["_compute_loss"], ns, cls="GRPOTrainer")
    ns["advantage_block"] = trl_advantage_block(path)
    return ns


def trl_advantage_block(path: Path) -> str:
    """The `sum_then_normalize` branch of `_generate_and_score_completions`, as it stands in the file."""
    lines = path.read_text().splitlines()
    start = next(i for i, s in enumerate(lines) if "mean_grouped_rewards = torch.nanmean(rewards.view" in s)
    end = next(i for i in range(start, len(lines)) if "is_std_zero = torch.isclose" in lines[i])
    return textwrap.dedent("\n".join(lines[start : end + 1]))


class _Accelerator:
    num_processes = 1

    def gather(self, x):
        return x.reshape(-1) if x.dim() == 0 else x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_trainer_stub(ns: dict, logp: torch.Tensor, cfg: dict) -> SimpleNamespace:
    args = SimpleNamespace(
        delta=cfg.get("delta"),
        use_bias_correction_kl=cfg.get("use_bias_correction_kl", True),
        sapo_temperature_pos=cfg.get("sapo_temperature_pos", 1.0),
        sapo_temperature_neg=cfg.get("sapo_temperature_neg", 1.05),
        steps_per_generation=1,
    )
    eps = cfg.get("epsilon", 0.2)
    stub = SimpleNamespace(
        args=args,
        beta=cfg.get("beta", 0.0),
        loss_type=cfg.get("loss_type", "dapo"),
        importance_sampling_level=cfg.get("importance_sampling_level", "token"),
        epsilon_low=eps,
        epsilon_high=cfg.get("epsilon_high") or eps,
        max_completion_length=cfg.get("max_completion_length", 512),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        use_vllm=False,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1,
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list)},
    )
    stub._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    return stub


def check_trl(root: Path) -> float:
    ns = trl_namespace(root)
    worst = 0.0
    cases = [dict(loss_type=lt) for lt in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")]
    cases += [dict(loss_type=lt, importance_sampling_level="sequence") for lt in ("grpo", "dapo", "sapo")]
    cases += [
        dict(loss_type="dapo", epsilon_high=0.28),
        dict(loss_type="grpo", delta=1.5),
        dict(loss_type="cispo", epsilon_high=1.3),
        dict(loss_type="dr_grpo", max_completion_length=9),
    ]
    cases += [
        dict(loss_type=lt, beta=0.04, use_bias_correction_kl=bc, importance_sampling_level=lvl)
        for lt in ("grpo", "dapo")
        for bc in (True, False)
        for lvl in ("token", "sequence")
    ]
    for seed, cfg in enumerate(cases):
        logp, old, ref, adv, mask, _ = random_case(seed)

        def theirs(lp, cfg=cfg, old=old, ref=ref, adv=adv, mask=mask):
            stub = trl_trainer_stub(ns, lp, cfg)
            inputs = {
                "prompt_ids": torch.zeros(8, 1, dtype=torch.long),
                "prompt_mask": torch.ones(8, 1),
                "completion_ids": torch.zeros_like(mask, dtype=torch.long),
                "completion_mask": mask,
                "advantages": adv,
                "old_per_token_logps": old,
                "ref_per_token_logps": ref,
                "num_items_in_batch": mask.sum(),
            }
            return ns["_compute_loss"](stub, None, inputs)

        def ours(lp, cfg=cfg, old=old, ref=ref, adv=adv, mask=mask):
            return trl_loss(lp, old, adv, mask, ref, **cfg)

        worst = max(worst, compare(f"trl loss {cfg}", ours, theirs, logp))
    for scale in ("group", "batch", "none", True, False):
        _, _, _, _, _, rewards = random_case(100)
        rewards[:4] = 2.0  # a tied group
        env = {
            "torch": torch,
            "nanstd": ns["nanstd"],
            "rewards": rewards.clone(),
            "num_generations": 4,
            "self": SimpleNamespace(scale_rewards={True: "group", False: "none"}.get(scale, scale)),
        }
        exec(ns["advantage_block"], env)
        err = (env["advantages"] - trl_advantages(rewards, 4, scale_rewards=scale)).abs().max().item()
        print(f"{'ok' if err <= TOL else 'MISMATCH':8s} {err:.1e}  trl advantages scale_rewards={scale!r}")
        worst = max(worst, err)
    return worst


# --- verl ------------------------------------------------------------------------------------------------


class _ActorConfig(SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def verl_namespace(root: Path) -> dict:
    base = root / "verl/verl"
    fns: dict[str, Any] = {"torch": torch}
    load_functions(
        base / "utils/torch_functional.py", ["masked_sum", "masked_mean", "masked_var", "masked_whiten"], fns
    )
    ns: dict[str, Any] = {
        "torch": torch,
        "np": np,
        "defaultdict": defaultdict,
        "Optional": Optional,
        "Any": Any,
        "verl_F": SimpleNamespace(**fns),
        "ActorConfig": _ActorConfig,
        "AlgoConfig": type("AlgoConfig", (), {}),
        "DictConfig": _ActorConfig,
    }
    core = base / "trainer/ppo/core_algos.py"
    names = [
        "agg_loss",
        "kl_penalty",
        "kl_penalty_forward",
        "compute_grpo_outcome_advantage",
        "compute_rloo_outcome_advantage",
        "compute_gpg_outcome_advantage",
        "compute_reinforce_plus_plus_outcome_advantage",
    ]
    names += [f"compute_policy_loss_{m}" for m in VERL_POLICY_LOSSES]
    load_functions(core, names, ns)
    return ns


def verl_ppo_loss(ns, lp, old, adv_tok, mask, ref, cfg):
    """`ppo_loss` of workers/utils/losses.py, as a composition of the loaded functions."""
    conf = _ActorConfig(
        clip_ratio=cfg.get("clip_ratio", 0.2),
        clip_ratio_low=cfg.get("clip_ratio_low", 0.2),
        clip_ratio_high=cfg.get("clip_ratio_high", 0.2),
        clip_ratio_c=cfg.get("clip_ratio_c", 3.0),
        tau_pos=cfg.get("tau_pos", 1.0),
        tau_neg=cfg.get("tau_neg", 1.05),
        global_batch_info={
            "dp_size": 1,
            "batch_num_tokens": mask.sum(),
            "global_batch_size": mask.shape[0],
            "loss_scale_factor": cfg.get("loss_scale_factor"),
        },
    )
    fn = ns[f"compute_policy_loss_{cfg.get('policy_loss', 'vanilla')}"]
    mode = cfg.get("loss_agg_mode", "token-mean")
    loss, _ = fn(
        old_log_prob=old,
        log_prob=lp,
        advantages=adv_tok,
        response_mask=mask.bool(),
        loss_agg_mode=mode,
        config=conf,
    )
    if cfg.get("use_kl_loss"):
        kld = ns["kl_penalty"](logprob=lp, ref_logprob=ref, kl_penalty=cfg["kl_loss_type"])
        loss = (
            loss
            + ns["agg_loss"](
                loss_mat=kld, loss_mask=mask.bool(), loss_agg_mode=mode, **conf.global_batch_info
            )
            * cfg["kl_loss_coef"]
        )
    return loss


def check_verl(root: Path) -> float:
    ns = verl_namespace(root)
    worst = 0.0
    cases = [
        dict(policy_loss=p, loss_agg_mode=m) for p, m in itertools.product(VERL_POLICY_LOSSES, VERL_AGG_MODES)
    ]
    cases += [
        dict(policy_loss="vanilla", clip_ratio_low=0.1, clip_ratio_high=0.28, clip_ratio_c=1.6),
        dict(policy_loss="vanilla", loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=11),
        dict(policy_loss="cispo", clip_ratio_low=None, clip_ratio_high=None, clip_ratio=0.5),
        dict(policy_loss="sapo", tau_pos=2.0, tau_neg=3.0),
    ]
    cases += [
        dict(policy_loss="vanilla", loss_agg_mode=m, use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type=k)
        for k in (*VERL_KL_TYPES, "k1+", "k3+", "low_var_kl+")
        for m in ("token-mean", "seq-mean-token-mean")
    ]
    for seed, cfg in enumerate(cases):
        logp, old, ref, adv, mask, _ = random_case(1000 + seed)
        adv_tok = adv.unsqueeze(1) * mask

        def theirs(lp, cfg=cfg, old=old, ref=ref, adv_tok=adv_tok, mask=mask):
            return verl_ppo_loss(ns, lp, old, adv_tok, mask, ref, cfg)

        def ours(lp, cfg=cfg, old=old, ref=ref, adv=adv, mask=mask):
            return verl_actor_loss(lp, old, adv, mask, ref, **cfg)

        worst = max(worst, compare(f"verl loss {cfg}", ours, theirs, logp))
    _, _, _, _, mask, rewards = random_case(2000)
    rewards[:4] = 1.0  # a tied group
    index = np.repeat(np.arange(2), 4)
    for est, kw in [("grpo", {}), ("grpo", {"norm_adv_by_std_in_grpo": False}), ("rloo", {}), ("gpg", {})]:
        fn = ns[f"compute_{est}_outcome_advantage"]
        theirs, _ = fn(
            token_level_rewards=_outcome_tokens(rewards, mask), response_mask=mask, index=index, **kw
        )
        ours = verl_advantages(rewards, 4, adv_estimator=est, **kw).unsqueeze(1) * mask
        err = (theirs - ours).abs().max().item()
        print(f"{'ok' if err <= TOL else 'MISMATCH':8s} {err:.1e}  verl advantages {est} {kw}")
        worst = max(worst, err)
    theirs, _ = ns["compute_reinforce_plus_plus_outcome_advantage"](
        token_level_rewards=_outcome_tokens(rewards, mask),
        response_mask=mask,
        config=SimpleNamespace(gamma=1.0),
    )
    err = (
        (theirs - verl_advantages(rewards, 4, adv_estimator="reinforce_plus_plus", mask=mask))
        .abs()
        .max()
        .item()
    )
    print(f"{'ok' if err <= TOL else 'MISMATCH':8s} {err:.1e}  verl advantages reinforce_plus_plus")
    return max(worst, err)


def _outcome_tokens(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """token_level_rewards: the outcome reward on each completion's last valid token."""
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0]), mask.sum(-1).long() - 1] = rewards
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    # Both libraries mix Python floats and integer counts into fp64 tensors (TRL: nanstd's Bessel factor
    # count/(count-1), the SAPO temperatures; verl: mask.sum() + 1e-8, GPG's bsz/count_nonzero). Torch
    # evaluates those in its default dtype, float32, which moves fp64 results by up to ~5e-8. With float64 as
    # the default those intermediates are exact and the comparison is bit-for-bit; pass --float32 to see them.
    if "--float32" not in sys.argv:
        torch.set_default_dtype(torch.float64)
    sys.argv = [a for a in sys.argv if a != "--float32"]
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/refsrc")
    worst = max(check_trl(root), check_verl(root))
    print(f"worst error {worst:.1e}")
    sys.exit(0 if worst <= TOL else 1)
