"""An independent fp64 reference for the presets: Eq. 1 and Table 1 written out token by token.

Plain Python loops over completions i and tokens t, scalar torch ops only (so autograd gives the gradient),
no code shared with companion.objective. Each method follows its row of Table 1 and the paper it cites,
with the constants the presets document (companion/methods.py): ε = 0.2, β = 0.04, σ with Bessel's
correction plus 1e-4, and so on. Groups are contiguous rows of ``group_size``.
"""

from __future__ import annotations

import math

import torch

SIGMA_EPS = 1e-4
BETA = 0.04


def group_of(i: int, group_size: int) -> range:
    start = (i // group_size) * group_size
    return range(start, start + group_size)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def bessel_std(xs: list[float]) -> float:
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def centred(rewards: list[float], group_size: int) -> list[float]:
    """Eq. 2: A_i = r_i − (1/G) Σ_{j in the group of i} r_j."""
    return [r - mean([rewards[j] for j in group_of(i, group_size)]) for i, r in enumerate(rewards)]


def scaled(rewards: list[float], group_size: int) -> list[float]:
    """A_i / (σ(r) + 1e-4): the σ(r) that Table 1 folds into α^S (0 for a tied group)."""
    adv = centred(rewards, group_size)
    out = []
    for i, a in enumerate(adv):
        sigma = bessel_std([rewards[j] for j in group_of(i, group_size)])
        out.append(a / (sigma + SIGMA_EPS) if sigma > 0 else 0.0)
    return out


def clipped(s, a: float, low: float, high: float):
    """min(s A, clip(s, 1−ε_low, 1+ε_up) A) for one token."""
    return torch.minimum(s * a, torch.clamp(s, 1 - low, 1 + high) * a)


def k3(lp, ref):
    """Table 1's D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1."""
    return torch.exp(ref - lp) - (ref - lp) - 1


def lengths_of(mask) -> list[int]:
    return [int(sum(mask[i])) for i in range(len(mask))]


def reference_loss(name: str, lp, old, rewards, mask, ref=None, group_size: int = 4, tokens=None,
                   entropies=None, gtpo_threshold: float | None = 0.7):
    """−J for preset ``name``; ``lp`` is an (N, T) fp64 tensor (requires grad), the rest plain data."""
    n, horizon = lp.shape
    lengths = lengths_of(mask.tolist())
    total_tokens = sum(lengths)
    r = rewards.tolist()
    m = mask.tolist()
    J = torch.zeros((), dtype=torch.float64)

    def ratio(i, t):
        return torch.exp(lp[i, t] - old[i, t])

    def tokens_of(i):
        return [t for t in range(horizon) if m[i][t]]

    if name in ("grpo_r1", "cppo"):  # α^S = 1/(G|o_i|σ), clip 0.2, β D_KL (CPPO: only |A| > 0.5)
        adv = scaled(r, group_size)
        for i in range(n):
            if name == "cppo" and not abs(adv[i]) > 0.5:
                continue
            for t in tokens_of(i):
                J = J + (clipped(ratio(i, t), adv[i], 0.2, 0.2) - BETA * k3(lp[i, t], ref[i, t])) / (
                    n * lengths[i])
    elif name == "grpo_v32":  # M/(G|o_i|), no σ, I·D_KL outside the mask
        adv = centred(r, group_size)
        for i in range(n):
            drift = sum(float(old[i, t] - lp[i, t].detach()) for t in tokens_of(i)) / max(lengths[i], 1)
            keep = 0.0 if adv[i] < 0 and drift > 0.5 else 1.0  # mean log(π_old/π_θ) > δ
            for t in tokens_of(i):
                J = J + (keep * clipped(ratio(i, t), adv[i], 0.2, 0.2)
                         - BETA * ratio(i, t) * k3(lp[i, t], ref[i, t])) / (n * lengths[i])
    elif name in ("gspo", "gcpo"):  # s_{i,t} = sg[s_i / π_θ(y_t)] π_θ(y_t)
        adv = scaled(r, group_size)
        eps_low, eps_high = (3e-4, 4e-4) if name == "gspo" else (0.2, 0.2)
        for i in range(n):
            log_s = sum(float(lp[i, t].detach() - old[i, t]) for t in tokens_of(i))
            if name == "gspo":
                log_s /= max(lengths[i], 1)
            for t in tokens_of(i):
                s = math.exp(log_s) * torch.exp(lp[i, t] - lp[i, t].detach())
                weight = 1 / (n * lengths[i]) if name == "gspo" else 1 / n  # α^S or 1/(σG)
                J = J + weight * clipped(s, adv[i], eps_low, eps_high)
    elif name == "gtpo":
        adv = centred(r, group_size)
        lam = gtpo_lambda(tokens.tolist(), adv, m, group_size)
        for i in range(n):
            mean_h = sum(float(entropies[i, t]) for t in tokens_of(i)) / max(lengths[i], 1)
            delta = 1.0 if gtpo_threshold is None or mean_h <= gtpo_threshold else 0.0
            for t in tokens_of(i):
                w = delta * lam[i][t] / (n * lengths[i])
                J = J + w * clipped(ratio(i, t), adv[i], 0.2, 0.2) - 0.1 * w * mean_h * ratio(i, t)
    elif name == "dapo":  # 1/(σ Σ|o_j|), clip-higher
        adv = scaled(r, group_size)
        for i in range(n):
            for t in tokens_of(i):
                J = J + clipped(ratio(i, t), adv[i], 0.2, 0.28) / total_tokens
    elif name == "dr_grpo":  # 1/G, no σ, β D_KL
        adv = centred(r, group_size)
        for i in range(n):
            for t in tokens_of(i):
                J = J + (clipped(ratio(i, t), adv[i], 0.2, 0.2) - BETA * k3(lp[i, t], ref[i, t])) / n
    elif name == "gpg":  # α̂ A log π / Σ|o|, α̂ = B / (B − M), M the tied groups
        adv = centred(r, group_size)
        groups = range(0, n, group_size)
        valid = sum(1 for g in groups if len(set(r[g:g + group_size])) > 1)
        alpha_hat = (n // group_size) / max(valid, 1)
        for i in range(n):
            for t in tokens_of(i):
                J = J + alpha_hat * adv[i] * lp[i, t] / total_tokens
    elif name == "cispo":  # sg[min(I, 5)] Â log π / Σ|o|
        adv = scaled(r, group_size)
        for i in range(n):
            for t in tokens_of(i):
                J = J + min(float(ratio(i, t).detach()), 5.0) * adv[i] * lp[i, t] / total_tokens
    elif name == "ppo":  # batch baseline, token mean
        b = mean(r)
        for i in range(n):
            for t in tokens_of(i):
                J = J + clipped(ratio(i, t), r[i] - b, 0.2, 0.2) / total_tokens
    elif name == "rloo":  # REINFORCE, leave-one-out baseline, (1/N) Σ_i A_i log π(o_i | x)
        for i in range(n):
            others = [r[j] for j in group_of(i, group_size) if j != i]
            a = r[i] - mean(others)
            for t in tokens_of(i):
                J = J + a * lp[i, t] / n
    elif name == "reinforce_pp":  # token-weighted batch whitening, clip 0.2, token mean
        count = total_tokens
        mu = sum(r[i] * lengths[i] for i in range(n)) / count
        var = sum(lengths[i] * (r[i] - mu) ** 2 for i in range(n)) / (count - 1)
        for i in range(n):
            a = (r[i] - mu) / math.sqrt(var + 1e-8)
            for t in tokens_of(i):
                J = J + clipped(ratio(i, t), a, 0.2, 0.2) / total_tokens
    else:
        raise KeyError(name)
    return -J


def gtpo_lambda(tokens: list[list[int]], adv: list[float], mask: list[list[float]],
                group_size: int) -> list[list[float]]:
    """λ_{i,t}: 2 on conflict tokens of positive completions, 0 on those of negative ones, else 1. A conflict
    token sits in the completion's leading run (or trailing run, counted from its end) of tokens that a
    completion of the opposite advantage sign in the group has at the same position."""
    n, horizon = len(tokens), len(tokens[0])
    lengths = [int(sum(row)) for row in mask]

    def at(i, t, from_end):
        return tokens[i][lengths[i] - 1 - t] if from_end else tokens[i][t]

    conflict = [[False] * horizon for _ in range(n)]
    for i in range(n):
        for from_end in (False, True):
            for t in range(lengths[i]):
                opposite = [j for j in group_of(i, group_size) if adv[j] * adv[i] < 0 and t < lengths[j]]
                if not any(at(j, t, from_end) == at(i, t, from_end) for j in opposite):
                    break
                conflict[i][lengths[i] - 1 - t if from_end else t] = True
    return [[(2.0 if adv[i] > 0 else 0.0) if conflict[i][t] else 1.0 for t in range(horizon)]
            for i in range(n)]
