"""The book's diagnostics of one training batch, from the tensors a trainer's loss already holds.

No trainer is imported here: the TRL bridge (and any other loop) calls :func:`batch_diagnostics` with the
loss inputs, the :class:`companion.objective.LossOutput` and a group id per completion, and gets one
flat dict of floats. Each number is what a chapter teaches to watch:

- shared prefixes (Prop. 1, ch. 3): W_agg = Σ_i ω_{i,t} A_i at every trie node that a whole group shares
  (:func:`prefix_w_agg`), summarised per group (``w_agg_max`` and ``w_agg_mean`` over groups of each
  group's largest |W_agg|); ``prefix_net_push``, the mean over groups of |W_agg| / Σ_i |ω_{i,t} A_i| at
  that node (0: the completions cancel, 1: they all push one way); ``shared_token_frac``, the share of
  tokens that sit at a node two or more completions of their group share;
- the clip (Props. 3 and 7, ch. 5): ``clip_fraction_low`` / ``_high`` (tokens whose gradient the clip
  zeroes), ``past_clip_low`` / ``_high`` (tokens whose ratio lies beyond 1 − ε_low / 1 + ε_high whatever
  the sign of A: momentum carries ratios there), ``ratio_min`` / ``ratio_max``;
- the loss value (Prop. 4, App. A, Eq. 11, ch. 6): ``cov_adv_omega``, the mean over groups of the
  population covariance of A_i and Ω_i = Σ_t ω_{i,t}; at the first inner step the reward part of J is
  Σ_i Ω_i A_i = Σ_groups G·Cov(A, Ω) when the advantages of each group sum to 0.

Groups are given by ``group_ids`` (N,) and need not be contiguous (TRL shuffles its batch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from companion.objective import LossOutput


def prefix_node_ids(tokens: Tensor, mask: Tensor, group_ids: Tensor) -> Tensor:
    """(N, T) long: the trie node of every token, −1 where the mask is 0.

    Two tokens get the same id exactly when their completions are in the same group and agree on every
    token up to and including this one (the node of App. B's prefix-restricted gradient). Built position
    by position: the node at t is the pair (node at t − 1, token at t), numbered with ``torch.unique``.
    """
    n, horizon = tokens.shape
    valid = mask > 0
    ids = torch.full((n, horizon), -1, dtype=torch.long, device=tokens.device)
    parent = torch.unique(group_ids.to(tokens.device), return_inverse=True)[1]
    offset = 0
    for t in range(horizon):
        alive = valid[:, t]
        if not alive.any():
            break
        pairs = torch.stack([parent[alive], tokens[alive, t].long()], dim=1)
        _, node = torch.unique(pairs, dim=0, return_inverse=True)
        column = torch.full((n,), -1, dtype=torch.long, device=tokens.device)
        column[alive] = node + offset
        ids[:, t] = column
        offset += int(node.max()) + 1
        parent = torch.where(alive, column, -1 - torch.arange(n, device=tokens.device))  # ended: no child
    return ids


def prefix_w_agg(tokens: Tensor, mask: Tensor, weights: Tensor, advantages: Tensor,
                 group_ids: Tensor) -> dict[str, Tensor]:
    """W_agg, the gross push Σ|ω A|, the number of completions and the group of every trie node.

    Returns 1-D tensors indexed by node id (:func:`prefix_node_ids`): ``w_agg`` = Σ_{i through the node}
    ω_{i,t} A_i (Eq. 18 with App. B's prefix sum), ``gross`` = Σ |ω_{i,t} A_i|, ``members``, ``group``
    (float64 on the CPU), and ``group_size`` per node (the completions its group has in the batch).
    """
    node = prefix_node_ids(tokens, mask, group_ids).cpu()
    adv = (advantages if advantages.dim() == 1 else advantages[:, 0]).detach().double().cpu()
    push = weights.detach().double().cpu() * adv[:, None]
    valid = node >= 0
    count = int(node.max()) + 1 if valid.any() else 0
    flat = node[valid]
    groups = torch.unique(group_ids.cpu(), return_inverse=True)[1]
    rows = torch.arange(node.shape[0])[:, None].expand_as(node)[valid]
    group_of_node = torch.zeros(count, dtype=torch.long).scatter_(0, flat, groups[rows])
    sizes = torch.bincount(groups).double()
    return {
        "w_agg": torch.zeros(count, dtype=torch.float64).index_add_(0, flat, push[valid]),
        "gross": torch.zeros(count, dtype=torch.float64).index_add_(0, flat, push[valid].abs()),
        "members": torch.bincount(flat, minlength=count).double(),
        "group": group_of_node,
        "group_size": sizes[group_of_node],
    }


def prefix_summary(tokens: Tensor, mask: Tensor, weights: Tensor, advantages: Tensor,
                   group_ids: Tensor) -> dict[str, float]:
    """W_agg on the nodes each whole group shares, summarised over groups (see the module docstring)."""
    nodes = prefix_w_agg(tokens, mask, weights, advantages, group_ids)
    whole = (nodes["members"] == nodes["group_size"]) & (nodes["group_size"] > 1)
    groups = torch.unique(nodes["group"][whole])
    largest, net = [], []
    for g in groups.tolist():
        in_group = whole & (nodes["group"] == g)
        w, gross = nodes["w_agg"][in_group], nodes["gross"][in_group]
        top = int(w.abs().argmax())
        largest.append(float(w.abs()[top]))
        if gross[top] > 0:
            net.append(float(w.abs()[top] / gross[top]))
    shared_tokens = (nodes["members"] * (nodes["members"] > 1)).sum()
    return {
        "w_agg_max": max(largest, default=0.0),
        "w_agg_mean": sum(largest) / len(largest) if largest else 0.0,
        "prefix_net_push": sum(net) / len(net) if net else math.nan,
        "shared_token_frac": float(shared_tokens / nodes["members"].sum().clamp(min=1)),
    }


def advantage_weight_covariance(advantages: Tensor, sequence_weight: Tensor, group_ids: Tensor) -> float:
    """Mean over groups of Cov(A, Ω) (population covariance within each group; App. A, Eq. 11)."""
    adv = (advantages if advantages.dim() == 1 else advantages[:, 0]).detach().double().cpu()
    omega = sequence_weight.detach().double().cpu()
    groups = torch.unique(group_ids.cpu(), return_inverse=True)[1]
    k = int(groups.max()) + 1
    size = torch.bincount(groups, minlength=k).double()
    mean_a = torch.zeros(k, dtype=torch.float64).index_add_(0, groups, adv) / size
    mean_o = torch.zeros(k, dtype=torch.float64).index_add_(0, groups, omega) / size
    products = (adv - mean_a[groups]) * (omega - mean_o[groups])
    return float((torch.zeros(k, dtype=torch.float64).index_add_(0, groups, products) / size).mean())


def ratio_summary(ratio: Tensor, mask: Tensor, clip_low: float | None,
                  clip_high: float | None) -> dict[str, float]:
    """Extremes of the importance ratio over the loss tokens, and the shares past each clip boundary."""
    valid = mask > 0
    values = ratio.detach().expand_as(mask)[valid].double()
    if values.numel() == 0:
        return dict.fromkeys(("ratio_min", "ratio_max", "past_clip_low", "past_clip_high"), math.nan)
    return {
        "ratio_min": float(values.min()),
        "ratio_max": float(values.max()),
        "past_clip_low": math.nan if clip_low is None else float((values < 1 - clip_low).double().mean()),
        "past_clip_high": math.nan if clip_high is None else float((values > 1 + clip_high).double().mean()),
    }


def batch_diagnostics(out: LossOutput, tokens: Tensor, mask: Tensor, advantages: Tensor, group_ids: Tensor,
                      *, clip_low: float | None, clip_high: float | None) -> dict[str, float]:
    """Every diagnostic of the module docstring for one loss call, as floats."""
    row = {key: float(value.detach()) for key, value in out.scalars().items()}
    row.update(ratio_summary(out.ratio, mask, clip_low, clip_high))
    row.update(prefix_summary(tokens, mask, out.weights, advantages, group_ids))
    row["cov_adv_omega"] = advantage_weight_covariance(advantages, out.sequence_weight, group_ids)
    return row
