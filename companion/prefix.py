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


# --- the expected prefix force over many groups (App. B.2 and the score-function identity) ---------------
@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` independent samples and its standard error, std / √n (Bessel's std)."""

    mean: float
    stderr: float
    n: int

    @classmethod
    def of(cls, samples: Tensor) -> Estimate:
        """The estimate from a 1-D tensor (or anything ``torch.as_tensor`` reads) of ≥ 2 samples."""
        x = torch.as_tensor(samples).detach().double().cpu().flatten()
        if x.numel() < 2:
            raise ValueError(f"samples: need at least 2 to estimate a standard error, got {x.numel()}")
        if not torch.isfinite(x).all():
            raise ValueError("samples must be finite (a NaN or inf would poison the mean)")
        return cls(float(x.mean()), float(x.std() / x.numel() ** 0.5), x.numel())

    @property
    def z(self) -> float:
        """mean / stderr: how many standard errors the mean lies from 0 (0 when every sample is 0)."""
        if self.stderr == 0:
            return 0.0 if self.mean == 0 else float("inf") if self.mean > 0 else float("-inf")
        return self.mean / self.stderr

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.stderr:.2g} (n = {self.n})"


@dataclass(frozen=True)
class PrefixForces:
    """What one optimizer step at θ = θ_old would feel at one position of the completion, group by group.

    ``logit[g]``: ∂J_g/∂z_v, the gradient of group g's objective on the logit of token v at ``position``,
    Σ_i ∂J_g/∂log π(y_{i,t}) (1{y_{i,t} = v} − π(v | x, y_{i,<t})): at position 0 (or inside a prefix that the
    whole group shares) that is the gradient on one softmax's logit (the prefix node of a tabular policy).
    ``push[g]``: Σ_i ∂J_g/∂log π(y_{i,t}), the group's total push on the log-probabilities at that position:
    W_agg of the node when the whole group shares y_{≤t} (App. B.2).
    """

    logit: Tensor  # (n,) float64
    push: Tensor  # (n,) float64
    position: int
    token: int

    def mean(self, which: str = "logit") -> Estimate:
        """The expected force over groups, ``"logit"`` or ``"push"``, with its standard error."""
        if which not in ("logit", "push"):
            raise ValueError(f"which must be 'logit' or 'push', got {which!r}")
        return Estimate.of(getattr(self, which))


def prefix_forces(policy, task, objective, *, groups: int = 512, group_size: int = 8, position: int = 0,
                  token: int | None = None, seed: int = 0) -> PrefixForces:
    """Sample ``groups`` independent groups (one random prompt, ``group_size`` completions each) from the
    policy at its current θ, with the task's template mode, and return each group's first-step force at
    ``position`` (:class:`PrefixForces`): the gradient of Eq. 15 that the group would contribute, at θ = θ_old
    (s = 1) and θ = θ_ref (a KL term adds nothing there).

    token: the token v whose logit is probed; default the template's token at ``position``.
    Each group is its own batch (B = 1), so token-mean weights such as DAPO's normalise within the group.
    A policy with S seeds (``TabularPolicy(num_seeds=S)``) gives S·groups samples, seed s drawing from
    ``seed + s``. The forced template's expected push is W_agg's mean; a sampled prefix's expected logit
    force is 0 whenever the prefix does not change what follows (E_{y~π}[∇log π(y)] = 0).
    """
    token = _check_probe(policy, task, groups, group_size, position, token)
    prompt_idx, completions = _sample_groups(policy, task, groups, group_size, seed)
    return _forces(policy, task, objective, prompt_idx, completions, group_size, position, token)


def _sample_groups(policy, task, groups: int, group_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """(S, groups·G) prompt index of every completion and (S, groups·G, T) completions, with the template
    the task's mode asks for (forced: written in; shared: sampled once per group; sampled: by the policy)."""
    from companion.lab import _prefix

    generators = [torch.Generator().manual_seed(seed + s) for s in range(policy.num_seeds)]
    device = next(policy.parameters()).device
    with torch.no_grad():
        prompts = torch.stack([task.sample_prompts(groups, g) for g in generators]).to(device)
        prefix = _prefix(policy, task, prompts, generators)
        completions = policy.sample(task, prompts, group_size, generators, prefix=prefix)
    return prompts.repeat_interleave(group_size, dim=1), completions


def _forces(policy, task, objective, prompt_idx: Tensor, completions: Tensor, group_size: int, position: int,
            token: int) -> PrefixForces:
    """The per-group forces on given samples: ∂J_g/∂log π by autograd on each group's own loss, then the
    softmax's Jacobian written out (∂log π(y)/∂z_v = 1{y = v} − π(v))."""
    from companion.lab import seedwise_advantages, seedwise_loss

    with torch.no_grad():
        logp, entropy = policy.logprobs(task, prompt_idx, completions)
        probe = completions.clone()
        probe[..., position] = token
        probe_logp, _ = policy.logprobs(task, prompt_idx, probe)
    dtype = logp.dtype
    rewards = task.reward(prompt_idx, completions).to(dtype)
    mask = task.completion_mask(completions).to(dtype)
    n = rewards.numel() // group_size
    per_group = (n, group_size, completions.shape[-1])
    lp = logp.reshape(per_group).requires_grad_(True)
    m, y = mask.reshape(per_group), completions.reshape(per_group)
    adv = seedwise_advantages(objective, rewards.reshape(n, group_size), group_size, m)
    fields = seedwise_loss(objective, lp, lp.detach(), adv, m, lp.detach(), tokens=y,
                           entropies=entropy.reshape(per_group), group_size=group_size)
    (d_logp,) = torch.autograd.grad(-fields["loss"].sum(), lp)  # ∂J_g/∂log π(y_{i,t}), J = −loss
    at_t = d_logp[..., position].double()
    chosen = (y[..., position] == token).double()
    p_token = probe_logp[..., position].reshape(n, group_size).exp().double()
    logit = (at_t * (chosen - p_token)).sum(-1)
    return PrefixForces(logit=logit.cpu(), push=at_t.sum(-1).cpu(), position=position, token=token)


def _check_probe(policy, task, groups: int, group_size: int, position: int, token: int | None) -> int:
    if not hasattr(policy, "num_seeds") or not hasattr(policy, "logprobs"):
        raise TypeError(f"policy must be a companion policy (TabularPolicy, GRUPolicy, TinyGPT2Policy), got "
                        f"{type(policy).__name__}")
    for name, value, low in (("groups", groups, 2), ("group_size", group_size, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < task.max_new_tokens:
        raise ValueError(f"position must be an int in [0, max_new_tokens={task.max_new_tokens}), got "
                         f"{position!r}")
    if token is None:
        if position >= task.prefix_len:
            raise ValueError(f"position {position} is outside the template (length {task.prefix_len}): "
                             "give token=, the id whose logit to probe")
        return int(task.template_ids[position])
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= task.eos_id:
        raise ValueError(f"token must be an id in [0, eos_id={task.eos_id}], got {token!r}")
    return token
