"""Independent plain-torch re-implementation of what verl 0.9.1's actor computes.

Written from reading `verl/trainer/ppo/core_algos.py`, `verl/workers/utils/losses.py` (`ppo_loss`),
`verl/utils/torch_functional.py`, `verl/workers/config/actor.py` and the FSDP engine of the verl 0.9.1
wheel (see SPEC.md). It models one data-parallel rank and one micro-batch that is the whole mini-batch:
`dp_size = 1`, `batch_num_tokens = mask.sum()`, `global_batch_size = N` (the number of rows, fully
masked rows included), no rollout-correction weights and `entropy_coeff = 0`.
"""

from __future__ import annotations

import torch

VERL_VERSION = "0.9.1"
VERL_GRPO_EPSILON = 1e-6  # `(score - mean) / (std + epsilon)`, epsilon=1e-6
VERL_POLICY_LOSSES = ("vanilla", "gspo", "gpg", "cispo", "geo_mean", "sapo")
VERL_AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
VERL_KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")


def verl_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    adv_estimator: str = "grpo",
    norm_adv_by_std_in_grpo: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Outcome advantages, (N,) for grpo/rloo/gpg, (N, T) token-level for reinforce_plus_plus.

    The outcome estimators broadcast a scalar per sequence (`scores.unsqueeze(-1) * response_mask`);
    we return that scalar. REINFORCE++ whitens token-level returns, so it needs `mask`.
    """
    n = rewards.shape[0]
    out = torch.empty_like(rewards)
    if adv_estimator == "reinforce_plus_plus":
        return _reinforce_pp(rewards, mask)
    nonzero = int((rewards != 0).sum())
    gpg_alpha = n / max(nonzero, 1)  # bsz / count_nonzero(scores).clamp(min=1)
    for start in range(0, n, group_size):
        group = rewards[start : start + group_size]
        g = group.numel()
        mean = group.sum() / g
        if adv_estimator == "grpo":
            std = torch.sqrt(((group - mean) ** 2).sum() / (g - 1))  # torch.std: Bessel
            centred = group - mean
            out[start : start + g] = (
                centred / (std + VERL_GRPO_EPSILON) if norm_adv_by_std_in_grpo else centred
            )
        elif adv_estimator == "rloo":
            out[start : start + g] = group * g / (g - 1) - mean * g / (g - 1)
        elif adv_estimator == "gpg":
            out[start : start + g] = gpg_alpha * (group - mean) / 1.0  # f_norm = 1
        else:
            raise ValueError(adv_estimator)
    return out


def _reinforce_pp(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """gamma = 1, outcome reward on the last valid token: returns = r_i on every valid token, then
    `masked_whiten` (token-weighted mean, Bessel token variance, rsqrt(var + 1e-8)), times the mask."""
    mask = mask.to(rewards.dtype)
    returns = rewards.unsqueeze(1) * mask
    count = mask.sum()
    mean = (returns * mask).sum() / (count + 1e-8)
    var = (((returns - mean) ** 2) * mask).sum() / (count + 1e-8) * count / (count - 1)
    return (returns - mean) * torch.rsqrt(var + 1e-8) * mask


def verl_agg_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, loss_agg_mode: str, loss_scale_factor: float | None = None
) -> torch.Tensor:
    """`agg_loss` with dp_size=1, batch_num_tokens=mask.sum(), global_batch_size=N."""
    mask = mask.to(loss_mat.dtype)
    n_rows, horizon = mask.shape
    masked = torch.where(mask.bool(), loss_mat, torch.zeros_like(loss_mat)) * mask
    if loss_agg_mode == "token-mean":
        return masked.sum() / mask.sum()
    if loss_agg_mode == "token-sum":
        return masked.sum()
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        loss = masked.sum(-1).sum() / n_rows
        if loss_agg_mode == "seq-mean-token-sum-norm":
            loss = loss / (horizon if loss_scale_factor is None else loss_scale_factor)
        return loss
    if loss_agg_mode == "seq-mean-token-mean":
        return (masked.sum(-1) / (mask.sum(-1) + 1e-8)).sum() / n_rows
    raise ValueError(loss_agg_mode)


def verl_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    policy_loss: str = "vanilla",
    loss_agg_mode: str = "token-mean",
    clip_ratio: float = 0.2,
    clip_ratio_low: float | None = 0.2,
    clip_ratio_high: float | None = 0.2,
    clip_ratio_c: float = 3.0,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """The `pg_loss` of the registered policy loss `policy_loss` (actor.policy_loss.loss_mode)."""
    adv = advantages.unsqueeze(1).expand_as(logprobs) if advantages.dim() == 1 else advantages
    adv = adv * mask.to(adv.dtype)  # the estimators hand the actor `scalar * response_mask`
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    log_ratio = logprobs - old_logprobs

    if policy_loss == "vanilla":
        ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
        loss1 = -adv * ratio
        loss2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
        clip_loss = torch.maximum(loss1, loss2)
        dual = torch.min(-adv * clip_ratio_c, clip_loss)
        mat = torch.where(adv < 0, dual, clip_loss)
    elif policy_loss == "gspo":
        seq_len = mask.sum(-1).clamp(min=1)
        seq_log_ratio = (log_ratio * mask).sum(-1) / seq_len
        log_s = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
        s = torch.exp(torch.clamp(log_s, max=10.0))
        mat = torch.maximum(-adv * s, -adv * torch.clamp(s, 1 - low, 1 + high))
    elif policy_loss == "gpg":
        mat = -logprobs * adv
    elif policy_loss == "cispo":
        ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
        mat = -torch.clamp(ratio, 1 - low, 1 + high).detach() * adv * logprobs
    elif policy_loss == "sapo":
        ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
        tau = torch.where(
            adv > 0, torch.as_tensor(tau_pos, dtype=adv.dtype), torch.as_tensor(tau_neg, dtype=adv.dtype)
        )
        mat = -torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * adv
        return verl_agg_loss(mat, mask, "seq-mean-token-mean")  # SAPO ignores loss_agg_mode
    elif policy_loss == "geo_mean":
        return _geo_mean(log_ratio, adv, mask, low, high)  # GMPO ignores loss_agg_mode
    else:
        raise ValueError(policy_loss)
    return verl_agg_loss(mat, mask, loss_agg_mode, loss_scale_factor)


def _geo_mean(log_ratio, adv, mask, low, high):
    """GMPO: sign-aware clip of the log-ratio, geometric mean over the sequence, plain mean over rows."""
    mask = mask.to(log_ratio.dtype)
    sign = torch.sign(adv)
    clamped = torch.clamp(log_ratio, -low, high)
    clipped_log_ratio = sign * torch.min(sign * log_ratio, sign * clamped)
    length = mask.sum(-1)
    seq_ratio = torch.exp((clipped_log_ratio * mask).sum(-1) / (length + 1e-8))
    seq_adv = (adv * mask).sum(-1) / (length + 1e-8)
    return (-seq_adv * seq_ratio).mean()


def verl_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kl_loss_type: str) -> torch.Tensor:
    """`kl_penalty(logprob, ref_logprob, kl_penalty)`, including the '+' straight-through variants."""
    straight_through = kl_loss_type.endswith("+")
    base = kl_loss_type[:-1] if straight_through else kl_loss_type
    diff = logprobs - ref_logprobs
    if base in ("kl", "k1"):
        forward = diff
    elif base == "abs":
        forward = diff.abs()
    elif base in ("mse", "k2"):
        forward = 0.5 * diff**2
    elif base in ("low_var_kl", "k3"):
        log_r = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
        forward = torch.clamp(torch.exp(log_r) - log_r - 1.0, -10.0, 10.0)
    else:
        raise ValueError(kl_loss_type)
    if not straight_through or base in ("mse", "k2"):
        return forward
    backward = 0.5 * diff**2
    return backward - backward.detach() + forward.detach()


def verl_actor_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    *,
    use_kl_loss: bool = False,
    kl_loss_coef: float = 0.001,
    kl_loss_type: str = "low_var_kl",
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    **policy_config,
) -> torch.Tensor:
    """`ppo_loss`: pg_loss + kl_loss_coef * agg_loss(kl, loss_agg_mode) when use_kl_loss."""
    loss = verl_policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        **policy_config,
    )
    if use_kl_loss:
        kl = verl_kl(logprobs, ref_logprobs, kl_loss_type)
        loss = loss + verl_agg_loss(kl, mask, loss_agg_mode, loss_scale_factor) * kl_loss_coef
    return loss
