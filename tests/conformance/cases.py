"""Random fp64 batches for the conformance tests, and the value-and-gradient comparison."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

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
