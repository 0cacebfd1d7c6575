"""Shared prefixes (Prop. 1, App. B): the trie of a group's completions and W_agg at every node.

Eq. 15 gives every sampled token y_{i,t} the gradient A_i ω_{i,t} ∇log π(y_{i,t} | x, y_{i,<t}), ω = α·s.
Completions of a group that agree on their first t+1 tokens pass through the same trie node. App. B.2
splits Eq. 15 into these shared tokens and the rest (Eq. 16); on a shared token ∇log π(y_t | prefix) is the
same for every completion (Eq. 17), so with ω_{i,t} := α_{i,t} s_{i,t} (Eq. 18) the node receives

    W_agg(node) ∇log π(y_t | prefix),   W_agg(node) = Σ_{i through the node} ω_{i,t} A_i

(the paper's displays after Eq. 18 are unnumbered). With constant ω and the whole group through the node,
W_agg = C Σ_i A_i = 0 (App. B.2, Case 1); with ω ∝ 1/|o_i| it is not (Case 2, the W_agg of Prop. 1)::

    out = obj.loss(logprobs, old, adv, mask)
    nodes = cp.prefix.trie(tokens, mask, out.weights, adv, group_size=8)
    shared = [n for n in nodes if n.shared]          # nodes of two or more completions
    max(abs(n.w_agg) for n in shared)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Node:
    """One trie node: the completions of one group that share ``prefix`` (token ids y_0..y_t)."""

    group: int
    depth: int  # t: the node holds token y_t, reached after the prefix y_<t
    prefix: tuple[int, ...]
    members: tuple[int, ...]  # row indices of the completions through the node
    w_agg: float  # Σ_{i ∈ members} ω_{i,t} A_i (App. B.2, Case 2)
    advantage_sum: float  # Σ_{i ∈ members} A_i (App. B.2, Case 1: W_agg = C · this, constant ω)
    group_size: int

    @property
    def shared(self) -> bool:
        """Two or more completions pass through this node."""
        return len(self.members) > 1

    @property
    def whole_group(self) -> bool:
        """Every completion of the group passes through this node."""
        return len(self.members) == self.group_size


def trie(tokens: Tensor, mask: Tensor, weights: Tensor, advantages: Tensor, group_size: int) -> list[Node]:
    """Every node of every group's trie, in (group, depth, prefix) order.

    tokens: (N, T) ids; mask: (N, T), a node exists where the mask is 1; weights: ω_{i,t} (N, T), e.g.
    ``LossOutput.weights``; advantages: (N,) or (N, T) (their first column); groups are contiguous.
    """
    _check(tokens, mask, weights, advantages, group_size)
    adv = (advantages if advantages.dim() == 1 else advantages[:, 0]).detach().double().cpu()
    omega = weights.detach().double().cpu()
    ids, valid = tokens.cpu().tolist(), (mask.cpu() > 0).tolist()
    nodes = []
    for g, start in enumerate(range(0, tokens.shape[0], group_size)):
        rows = range(start, start + group_size)
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for i in rows:
            for t in range(tokens.shape[1]):
                if not valid[i][t]:
                    break
                by_prefix.setdefault(tuple(ids[i][: t + 1]), []).append(i)
        for prefix in sorted(by_prefix, key=lambda p: (len(p), p)):
            members = tuple(by_prefix[prefix])
            t = len(prefix) - 1
            w = sum(float(omega[i, t] * adv[i]) for i in members)
            nodes.append(Node(g, t, prefix, members, w, sum(float(adv[i]) for i in members), group_size))
    return nodes


def w_agg_by_depth(tokens: Tensor, mask: Tensor, weights: Tensor, advantages: Tensor, group_size: int,
                   *, whole_group_only: bool = True) -> Tensor:
    """(T,) Σ over groups of W_agg at the depth-t nodes the whole group shares (0 where none is shared);
    with ``whole_group_only=False``, every shared node counts."""
    total = torch.zeros(tokens.shape[1], dtype=torch.float64)
    for node in trie(tokens, mask, weights, advantages, group_size):
        if node.whole_group if whole_group_only else node.shared:
            total[node.depth] += node.w_agg
    return total


def _check(tokens: Tensor, mask: Tensor, weights: Tensor, advantages: Tensor, group_size: int) -> None:
    if tokens.dim() != 2 or tokens.is_floating_point():
        raise TypeError(f"tokens must be (N, T) integer ids, got {tuple(tokens.shape)} {tokens.dtype}")
    if mask.shape != tokens.shape or weights.shape != tokens.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and weights {tuple(weights.shape)} must have the shape "
                         f"of tokens {tuple(tokens.shape)}")
    if advantages.shape not in (tokens.shape[:1], tokens.shape):
        raise ValueError(f"advantages must be (N,) or (N, T), got {tuple(advantages.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or tokens.shape[0] % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive int dividing N={tokens.shape[0]}")
