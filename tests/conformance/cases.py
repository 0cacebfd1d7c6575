"""Random fp64 batches for the conformance tests, and the value-and-gradient comparison."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from trl_reference import TRL_LOSS_TYPES
from verl_reference import VERL_AGG_MODES, VERL_POLICY_LOSSES

TOL = 1e-6  # the contract of issue 2: loss value and d loss / d logprobs to 1e-6


@dataclass(frozen=True)
class Batch:
    logprobs: torch.Tensor  # (N, T)
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    mask: torch.Tensor  # (N, T) 0/1, ragged, every row non-empty
    rewards: torch.Tensor  # (N,)
    group_size: int


def random_batch(seed: int, n_groups: int = 3, group_size: int = 4, horizon: int = 9) -> Batch:
    """Ragged lengths (one row of length 1, one of full length), log-ratios ~ N(0, 0.3²) so ratios fall
    inside and outside [0.8, 1.2] and beyond 3, integer rewards with ties, one fully tied group."""
    g = torch.Generator().manual_seed(seed)
    n = n_groups * group_size
    lengths = torch.randint(1, horizon + 1, (n,), generator=g)
    lengths[0], lengths[-1] = 1, horizon
    mask = (torch.arange(horizon).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float64)
    old = -0.05 - 3.0 * torch.rand(n, horizon, generator=g, dtype=torch.float64)
    logp = old + 0.3 * torch.randn(n, horizon, generator=g, dtype=torch.float64)
    logp[1, 0] = old[1, 0] + 1.3  # a ratio beyond verl's default dual-clip bound 3
    ref = old + 0.3 * torch.randn(n, horizon, generator=g, dtype=torch.float64)
    rewards = torch.randint(0, 4, (n,), generator=g).to(torch.float64)
    rewards[-group_size:] = 1.0  # a tied group: zero advantage, not NaN
    return Batch(logp, old, ref, mask, rewards, group_size)


def signed_advantages(batch: Batch, seed: int) -> torch.Tensor:
    """Advantages of both signs, never exactly 0, for loss tests that do not go through rewards."""
    g = torch.Generator().manual_seed(1000 + seed)
    adv = torch.randn(batch.rewards.shape[0], generator=g, dtype=torch.float64)
    return adv + 0.1 * torch.sign(adv)


def assert_value_and_grad_match(
    ours: Callable[[torch.Tensor], torch.Tensor],
    reference: Callable[[torch.Tensor], torch.Tensor],
    logprobs: torch.Tensor,
) -> None:
    """Same scalar and same autograd gradient wrt `logprobs`, to TOL (absolute)."""
    a = logprobs.clone().requires_grad_(True)
    b = logprobs.clone().requires_grad_(True)
    loss_a, loss_b = ours(a), reference(b)
    (grad_a,) = torch.autograd.grad(loss_a, a)
    (grad_b,) = torch.autograd.grad(loss_b, b)
    assert grad_b.abs().max() > 0, "degenerate case: the reference gradient is zero"
    torch.testing.assert_close(loss_a.detach(), loss_b.detach(), atol=TOL, rtol=0)
    torch.testing.assert_close(grad_a, grad_b, atol=TOL, rtol=0)


# ---- the configurations every conformance test runs ----------------------------------------------------


def case_id(cfg: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "defaults"


def _verl_loss_cases() -> list[dict]:
    cases = [
        dict(policy_loss=p, loss_agg_mode=m) for p, m in itertools.product(VERL_POLICY_LOSSES, VERL_AGG_MODES)
    ]
    cases += [
        {},  # every default: vanilla, token-mean, clip 0.2/0.2, dual clip 3.0, no KL
        dict(clip_ratio_low=0.1, clip_ratio_high=0.28, clip_ratio_c=1.6),
        dict(clip_ratio_low=None, clip_ratio_high=None, clip_ratio=0.3, loss_agg_mode="seq-mean-token-mean"),
        dict(clip_ratio=0.5),  # ignored by verl: clip_ratio_low/high default to 0.2, not None
        dict(policy_loss="cispo", clip_ratio_low=None, clip_ratio_high=None, clip_ratio=0.5),
        dict(
            policy_loss="gspo", clip_ratio_low=3e-4, clip_ratio_high=4e-4, loss_agg_mode="seq-mean-token-mean"
        ),
        dict(policy_loss="geo_mean", clip_ratio_low=0.4, clip_ratio_high=0.4),
        dict(policy_loss="sapo", tau_pos=2.0, tau_neg=3.0),
        dict(loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=11),
        dict(policy_loss="gpg", loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=4096),
    ]
    return cases


VERL_LOSS_CASES = _verl_loss_cases()

KL_CASES = [
    dict(use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type=k, loss_agg_mode=m)
    for k in ("kl", "k1", "mse", "k2", "low_var_kl", "k3")
    for m in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
]
KL_CASES += [
    dict(use_kl_loss=True),  # verl's kl defaults: low_var_kl, coefficient 0.001
    dict(use_kl_loss=False, kl_loss_coef=0.5, kl_loss_type="k1"),  # coefficient without use_kl_loss: no KL
    dict(
        policy_loss="gspo", use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k2", loss_agg_mode="token-mean"
    ),
    dict(
        policy_loss="cispo", use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k1", loss_agg_mode="token-sum"
    ),
]
# The policy term of sapo and geo_mean ignores loss_agg_mode but verl aggregates their KL term with it.
KL_MIXED_AGG_CASES = [
    dict(
        policy_loss="sapo", use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k3", loss_agg_mode="token-mean"
    ),
    dict(
        policy_loss="geo_mean",
        use_kl_loss=True,
        kl_loss_coef=0.1,
        kl_loss_type="k1",
        loss_agg_mode="token-mean",
    ),
]
KL_EXTRA_TYPES = [
    dict(use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type=k)
    for k in ("abs", "k1+", "k3+", "low_var_kl+", "abs+")
]


def _trl_loss_cases() -> list[dict]:
    cases = [
        dict(loss_type=lt, importance_sampling_level=lvl)
        for lt in TRL_LOSS_TYPES
        for lvl in ("token", "sequence")
    ]
    cases += [
        {},  # every default: dapo, token level, epsilon 0.2
        dict(loss_type="dapo", epsilon_high=0.28),
        dict(loss_type="bnpo", epsilon=0.1, epsilon_high=0.3),
        dict(loss_type="grpo", delta=1.5),
        dict(loss_type="dapo", delta=2.0, epsilon_high=0.28),
        dict(loss_type="cispo", epsilon_high=1.3),
        dict(loss_type="cispo", epsilon_high=5.0),
        dict(loss_type="dr_grpo", max_completion_length=9),
        dict(loss_type="dr_grpo", max_completion_length=64),
        dict(loss_type="sapo", sapo_temperature_pos=2.0, sapo_temperature_neg=3.5),
    ]
    cases += [
        dict(loss_type=lt, beta=0.04, use_bias_correction_kl=bc, importance_sampling_level=lvl)
        for lt in ("grpo", "dapo", "dr_grpo")
        for bc in (False, True)
        for lvl in ("token", "sequence")
    ]
    cases += [dict(loss_type="sapo", beta=0.1), dict(loss_type="cispo", beta=0.1, epsilon_high=1.3)]
    return cases


TRL_LOSS_CASES = _trl_loss_cases()
