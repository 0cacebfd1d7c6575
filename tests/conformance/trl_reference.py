"""Independent plain-torch re-implementation of what TRL 1.16.0's `GRPOTrainer` computes.

Written from reading `trl/trainer/grpo_trainer.py` and `trl/trainer/grpo_config.py` of the trl 1.16.0
wheel (see SPEC.md for the formulas and line references). It models one process, one micro-batch
(`gradient_accumulation_steps == steps_per_generation == 1`), no vLLM importance-sampling correction,
no entropy mask, no off-policy mask and no entropy bonus: the setting in which TRL's loss is a pure
function of the tensors below.
"""

from __future__ import annotations

import torch

TRL_VERSION = "1.16.0"
TRL_STD_STABILISER = 1e-4  # `advantages / (std_rewards + 1e-4)`
TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")


def trl_advantages(
    rewards: torch.Tensor, group_size: int, *, scale_rewards: str | bool = "group"
) -> torch.Tensor:
    """`(r_i - mean_group) / (std + 1e-4)` with Bessel's std over the group, the batch, or no scaling.

    `scale_rewards=True/False` are TRL's legacy spellings of "group"/"none" (`GRPOConfig.__post_init__`).
    """
    if isinstance(scale_rewards, bool):
        scale_rewards = "group" if scale_rewards else "none"
    n = rewards.shape[0]
    advantages = torch.empty_like(rewards)
    batch_std = _bessel_std(rewards)
    for start in range(0, n, group_size):
        group = rewards[start : start + group_size]
        centred = group - group.sum() / group_size
        if scale_rewards == "group":
            centred = centred / (_bessel_std(group) + TRL_STD_STABILISER)
        elif scale_rewards == "batch":
            centred = centred / (batch_std + TRL_STD_STABILISER)
        elif scale_rewards != "none":
            raise ValueError(f"scale_rewards={scale_rewards!r}")
        advantages[start : start + group_size] = centred
    return advantages


def _bessel_std(x: torch.Tensor) -> torch.Tensor:
    mean = x.sum() / x.numel()
    return torch.sqrt(((x - mean) ** 2).sum() / (x.numel() - 1))


def trl_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    *,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    use_bias_correction_kl: bool = True,
    max_completion_length: int = 512,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
) -> torch.Tensor:
    """The scalar `loss` that `GRPOTrainer._compute_loss` returns (one process, one micro-batch)."""
    eps_low = epsilon
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages

    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "token":
        log_weight = log_ratio
    elif importance_sampling_level == "sequence":
        # mean log-ratio over the completion, differentiable: d/dlogp_t = 1/|o_i|
        log_weight = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(importance_sampling_level)
    ratio = torch.exp(log_weight)  # (N, T) or (N, 1); never clamped, never detached

    if beta != 0.0:
        diff = ref_logprobs - logprobs
        kl = torch.exp(diff) - diff - 1.0  # k3
        if use_bias_correction_kl:
            kl = kl * ratio  # the (undetached) importance weight, before any `delta` clamp

    if loss_type == "cispo":
        weight = torch.clamp(ratio, max=eps_high).detach()
        per_token = -weight * adv * logprobs
    elif loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
        unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
        per_token = -torch.min(unclipped * adv, clipped * adv)
    elif loss_type == "sapo":
        tau = torch.where(
            adv > 0,
            torch.as_tensor(sapo_temperature_pos, dtype=adv.dtype),
            torch.as_tensor(sapo_temperature_neg, dtype=adv.dtype),
        )
        per_token = -(torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau) * adv
    else:
        raise ValueError(loss_type)

    if beta != 0.0:
        per_token = per_token + beta * kl
    masked = per_token * mask  # broadcasts a (N, 1) sequence-level loss onto every token

    if loss_type in ("grpo", "sapo"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return masked.sum() / (masked.shape[0] * max_completion_length)
    if loss_type == "luspo":
        return masked.sum(-1).mean()
    # dapo, cispo: num_items_in_batch (active tokens of the generation batch) / num_processes
    #              * grad_accum / steps_per_generation  ->  mask.sum() in one process, one micro-batch
    return masked.sum() / mask.sum().clamp(min=1.0)
