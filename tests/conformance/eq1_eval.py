"""Evaluate a trainer's reading (the fields of its `Objective`) literally as Eq. 1:
L = -sum_{i,t} alpha_{i,t} f(s_{i,t}, A_i) + beta R, with code of its own.

This is the bridge test of the translation: if this plain evaluation of the fields matches the library
references (test_trainer_reading.py), the reading is right, and what remains is that `Objective.loss`
realises the fields (test_trl.py, test_verl.py).
"""

from __future__ import annotations

import torch

from companion.objective import Objective


def eq1_advantages(
    spec: Objective, rewards: torch.Tensor, group_size: int, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 2 with the reading's baseline, sigma and stabiliser (outcome rewards, groups contiguous).

    "batch_whiten" weighs each completion by its length `lengths` (verl whitens token-level returns):
    weighted mean, weighted variance with Bessel's correction over the token count, 1e-8 under the root.
    """
    groups = rewards.reshape(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    if spec.baseline == "batch_whiten":
        w = torch.ones_like(rewards) if lengths is None else lengths.to(rewards.dtype)
        tokens = w.sum()
        centre = (w * rewards).sum() / tokens
        var = (w * (rewards - centre) ** 2).sum() / (tokens - 1)
        return (rewards - centre) / torch.sqrt(var + 1e-8)
    if spec.baseline == "leave_one_out":
        adv = (groups - mean) * group_size / (group_size - 1)
    else:
        adv = groups - mean
    if spec.std_scale == "group":
        adv = adv / (groups.std(dim=1, correction=1, keepdim=True) + spec.std_eps)
    elif spec.std_scale == "batch":
        adv = adv / (rewards.std(correction=1) + spec.std_eps)
    adv = adv.reshape(-1)
    if spec.gpg_alpha:
        adv = adv * rewards.numel() / max(int((rewards != 0).sum()), 1)
    return adv


def alpha_weights(kind: str, mask: torch.Tensor, constant_length: float | None) -> torch.Tensor:
    """alpha_{i,t} of Eq. 1 for an aggregation (mask included)."""
    n, horizon = mask.shape
    lengths = mask.sum(-1, keepdim=True)
    return {
        "seq_mean_token_mean": lambda: mask / (n * lengths.clamp(min=1)),
        "token_mean": lambda: mask / mask.sum(),
        "token_sum": lambda: mask,
        "seq_mean_token_sum": lambda: mask / n,
        "constant": lambda: mask / (n * (constant_length or horizon)),
    }[kind]()


def eq1_loss(spec, logprobs, old_logprobs, advantages, mask, ref_logprobs=None) -> torch.Tensor:
    mask = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1).expand_as(logprobs) if advantages.dim() == 1 else advantages
    log_ratio = logprobs - old_logprobs
    seq_log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
    if spec.ratio_level == "sequence":  # value s_i on every token, gradient s_i * grad log pi_t
        s = torch.exp(logprobs - logprobs.detach() + seq_log_ratio.detach())
        weight_for_kl = torch.exp(seq_log_ratio)
    else:
        s = torch.exp(log_ratio)
        weight_for_kl = s

    if spec.surrogate == "geometric_mean":
        sign = torch.sign(adv)
        clipped = sign * torch.minimum(
            sign * log_ratio, sign * log_ratio.clamp(-spec.clip_low, spec.clip_high)
        )
        lengths = mask.sum(-1)
        seq_ratio = torch.exp((clipped * mask).sum(-1) / lengths)
        seq_adv = (adv * mask).sum(-1) / lengths
        policy = -(seq_adv * seq_ratio).mean()
    else:
        policy = -(
            alpha_weights(spec.aggregation, mask, spec.constant_length) * _surrogate(spec, s, adv, logprobs)
        ).sum()

    if not spec.beta:
        return policy
    kl = _kl(spec, logprobs, ref_logprobs)
    if spec.kl_ratio_weighted:
        kl = kl * weight_for_kl
    return policy + spec.beta * (alpha_weights(spec.kl_aggregation, mask, spec.constant_length) * kl).sum()


def _surrogate(spec, s, adv, logprobs):
    """f(s, A) per token: the objective's term before the weights alpha (a reward, to maximise)."""
    if spec.surrogate == "log_prob":
        return adv * logprobs
    if spec.surrogate == "is_weighted_log_prob":
        low = -torch.inf if spec.is_weight_low is None else spec.is_weight_low
        high = torch.inf if spec.is_weight_high is None else spec.is_weight_high
        return torch.clamp(s, low, high).detach() * adv * logprobs
    if spec.surrogate == "soft_gate":
        tau_pos, tau_neg = spec.sapo_temperatures
        tau_pos, tau_neg = (torch.as_tensor(t, dtype=s.dtype) for t in (tau_pos, tau_neg))
        tau = torch.where(adv > 0, tau_pos, tau_neg)
        return 4.0 / tau * torch.sigmoid(tau * (s - 1.0)) * adv
    capped = s if spec.ratio_cap is None else torch.clamp(s, max=spec.ratio_cap)
    f = torch.minimum(capped * adv, torch.clamp(s, 1 - spec.clip_low, 1 + spec.clip_high) * adv)
    if spec.dual_clip is not None:
        f = torch.where(adv < 0, torch.maximum(f, spec.dual_clip * adv), f)
    return f


def _kl(spec, logprobs, ref_logprobs):
    d = logprobs - ref_logprobs
    if spec.kl == "k1":
        return d
    if spec.kl == "k2":
        return 0.5 * d**2
    x = -d.clamp(-20, 20) if spec.kl_clamped else -d
    k3 = torch.exp(x) - x - 1
    return k3.clamp(-10, 10) if spec.kl_clamped else k3
