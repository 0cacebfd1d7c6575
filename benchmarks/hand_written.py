"""Hand-written baselines for the lab benchmark: the GRPO loop written out as one plain tensor program.

``tabular_grpo`` trains a tabular tree policy for S seeds exactly as ``cp.lab.train`` does with
``cp.Objective.preset("grpo")`` and AdamW, with none of the lab's generality: no policy, task or objective
objects in the loop, no input checks, no History, the reference log-probabilities looked up in a table
computed once. It records the lab's columns (reward, accuracy, length, tied_fraction, entropy, kl_old,
kl_ref, ratio_min, ratio_max, loss, clip fractions), so both programs do the same work;
``tests/test_benchmarks.py`` checks that the records are bit for bit the lab's, in both random-stream modes.

``gpt2_grpo_step`` is one GRPO step of a tiny GPT-2 with a minimal KV-cache sampler (no ``generate``).
"""

from __future__ import annotations

import torch
from torch import Tensor

import companion as cp

CLIP = 0.2  # GRPO's epsilon (cp.Objective.preset("grpo"))
STD_EPS = 1e-4
MAX_LOG_RATIO = 20.0


def _draw(generators: list[torch.Generator] | torch.Generator, num_prompts: int, batch: int, n: int,
          horizon: int, seeds: int) -> tuple[Tensor, Tensor]:
    """(S, B) prompt indices and (S, N, T) float64 uniforms: per seed from its own generator, or all seeds
    from one generator (the lab's ``streams="batched"``)."""
    if isinstance(generators, torch.Generator):
        prompts = torch.randint(num_prompts, (seeds, batch), generator=generators)
        return prompts, torch.rand(seeds, n, horizon, generator=generators, dtype=torch.float64)
    prompts = torch.stack([torch.randint(num_prompts, (batch,), generator=g) for g in generators])
    uniforms = torch.stack([torch.rand(n, horizon, generator=g, dtype=torch.float64) for g in generators])
    return prompts, uniforms


def tabular_grpo(task: cp.Task, num_seeds: int, steps: int, *, group_size: int = 8, prompts_per_step: int = 4,
                 lr: float = 0.1, seed: int = 0, streams: str = "per_seed",
                 fused: bool = False) -> dict[str, Tensor]:
    """Train a uniform tabular policy with GRPO (mu = 1) and AdamW; return {column: (steps, S)}."""
    V, T, m = task.vocab_size, task.max_new_tokens, task.min_new_tokens
    S, P, G, B = num_seeds, task.num_prompts, group_size, prompts_per_step
    N, eos = B * G, task.eos_id
    offsets = [sum(V ** d for d in range(t)) for t in range(T + 1)]
    nodes = offsets[T]
    logits = torch.zeros(S, P, nodes, V + 1, requires_grad=True)
    opt = torch.optim.AdamW([logits], lr=lr, fused=True) if fused else torch.optim.AdamW([logits], lr=lr)
    generators = (torch.Generator().manual_seed(seed) if streams == "batched"
                  else [torch.Generator().manual_seed(seed + s) for s in range(S)])

    depth = torch.cat([torch.full((offsets[t + 1] - offsets[t],), t) for t in range(T)])
    eos_forbidden = torch.zeros(nodes, V + 1, dtype=torch.bool)
    eos_forbidden[depth < m, eos] = True
    start = logits.detach().masked_fill(eos_forbidden, float("-inf"))
    ref_table = (start - start.logsumexp(-1, keepdim=True)).view(-1, V + 1)  # pi_ref, looked up later
    seed_rows = torch.arange(S).view(S, 1) * P
    answers, correct_len = task.answers, task.answers.shape[1]
    shortest = task.prefix_len + correct_len + 1
    span = max(T - shortest, 1)
    positions = torch.arange(T)
    records: dict[str, list[Tensor]] = {}

    for _ in range(steps):
        # --- rollout: inverse-CDF sampling down the tree, one position at a time
        prompts, uniforms = _draw(generators, P, B, N, T, S)
        x = prompts.repeat_interleave(G, dim=1)  # (S, N)
        rows = (seed_rows + x) * nodes  # (S, N): first row of each completion's prompt table
        flat = logits.detach().view(-1, V + 1)
        tokens = torch.full((S, N, T), eos, dtype=torch.long)
        index = torch.zeros(S, N, dtype=torch.long)
        node_ids = torch.empty(S, N, T, dtype=torch.long)
        for t in range(T):
            node_ids[..., t] = offsets[t] + index
            z = flat.index_select(0, (rows + node_ids[..., t]).flatten()).view(S, N, V + 1)
            if t < m:
                z = z.clone()
                z[..., eos] = float("-inf")
            p = (z - z.amax(-1, keepdim=True)).exp()
            cdf = p.double().cumsum(-1)
            tokens[..., t] = (cdf <= (uniforms[..., t] * cdf[..., -1]).unsqueeze(-1)).sum(-1).clamp(
                max=V - 1 if t < m else V)
            index = index * V + tokens[..., t].clamp(max=V - 1)
        is_eos = (tokens == eos).long()
        before = torch.cumsum(is_eos, -1) - is_eos
        tokens = tokens.masked_fill(before > 0, eos)
        mask = (before == 0).float()
        lengths = mask.sum(-1)
        correct = (tokens[..., :correct_len] == answers[x]).all(-1).float()
        rewards = correct * (1.0 - task.length_strength * ((lengths - shortest) / span).clamp(0.0, 1.0)) \
            if task.length == "short" else correct
        flat_rows = (rows.unsqueeze(-1) + node_ids).flatten()
        ref = ref_table.index_select(0, flat_rows).view(S, N, T, V + 1).gather(
            -1, tokens.masked_fill(mask == 0, 0).unsqueeze(-1)).squeeze(-1).masked_fill(mask == 0, 0.0)

        # --- advantages (Eq. 2, per group, per seed)
        groups = rewards.view(S, B, G)
        sigma = groups.std(-1, keepdim=True)
        adv = torch.where(sigma > 0, (groups - groups.mean(-1, keepdim=True)) / (sigma + STD_EPS),
                          torch.zeros_like(groups)).view(S, N, 1)

        # --- forward, loss (GRPO: 1/(G|o_i|), clip 0.2), backward, AdamW
        z = logits.view(-1, V + 1).index_select(0, flat_rows).view(S, N, T, V + 1)
        z = z.masked_fill((positions < m).view(T, 1) & (torch.arange(V + 1) == eos), float("-inf"))
        logp_all = z - z.logsumexp(-1, keepdim=True)
        logp = logp_all.gather(-1, tokens.masked_fill(mask == 0, 0).unsqueeze(-1)).squeeze(-1)
        logp = logp.masked_fill(mask == 0, 0.0)
        finite = logp_all.detach().clamp(min=torch.finfo(logp_all.dtype).min)
        entropy = -(finite.exp() * finite).sum(-1) * mask
        old = logp.detach()
        d = logp - old
        s = (d - (d - MAX_LOG_RATIO).clamp(min=0).detach()).exp()
        f = torch.minimum(s * adv, s.clamp(1.0 - CLIP, 1.0 + CLIP) * adv)
        row_weight = 1.0 / (N * lengths.unsqueeze(-1).clamp(min=1))
        loss = -((f * mask).sum(-1, keepdim=True) * row_weight).sum((1, 2))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()

        # --- records (statistics before the update, as the lab's)
        tokens_in_loss = mask.sum((1, 2))
        lp = logp.detach()
        sd = s.detach()
        row = {
            "reward": rewards.mean(1), "accuracy": correct.mean(1), "length": lengths.mean(1),
            "tied_fraction": (groups == groups[..., :1]).all(-1).float().mean(-1),
            "entropy": (entropy * mask).sum((1, 2)) / tokens_in_loss.clamp(min=1),
            "kl_old": torch.zeros(S),
            "kl_ref": ((torch.expm1(ref - lp) - (ref - lp)) * mask).sum((1, 2)) / tokens_in_loss.clamp(min=1),
            "ratio_min": torch.ones(S), "ratio_max": torch.ones(S), "loss": loss.detach(),
            "clip_fraction_low": (((adv < 0) & (sd < 1.0 - CLIP)).float() * mask).sum((1, 2))
            / tokens_in_loss.clamp(min=1),
            "clip_fraction_high": (((adv > 0) & (sd > 1.0 + CLIP)).float() * mask).sum((1, 2))
            / tokens_in_loss.clamp(min=1),
        }
        for name, value in row.items():
            records.setdefault(name, []).append(value)
    return {name: torch.stack(values) for name, values in records.items()}


class GPT2Loop:
    """GRPO on a tiny GPT-2, written out: prompts, a KV-cache sampling loop, rewards, group advantages, one
    forward pass with gradients, the clipped loss, AdamW (mu = 1, no reference model: beta = 0)."""

    def __init__(self, policy: cp.TinyGPT2Policy, task: cp.Task, *, group_size: int = 8,
                 prompts_per_step: int = 4, lr: float = 1e-3) -> None:
        self.model, self.task, self.G, self.B = policy.model, task, group_size, prompts_per_step
        self.eos, self.pad = policy.eos_id, policy.pad_id
        self.extra = torch.tensor(policy._extra_token_ids())
        self.opt = torch.optim.AdamW(policy.model.parameters(), lr=lr)
        self.generator: torch.Generator | None = None

    @torch.no_grad()
    def sample(self, inputs: Tensor, rng: torch.Generator) -> Tensor:
        n, length = inputs.shape
        T, m = self.task.max_new_tokens, self.task.min_new_tokens
        alive = torch.ones(n, dtype=torch.long)
        out = self.model(input_ids=inputs, attention_mask=torch.ones_like(inputs), use_cache=True)
        tokens = []
        for t in range(T):
            scores = out.logits[:, -1].to(copy=True, dtype=torch.float32)
            if t < m:
                scores[:, self.eos] = float("-inf")
            scores[:, self.extra] = float("-inf")
            y = torch.multinomial(torch.softmax(scores, -1), 1, generator=rng).squeeze(1)
            y = y * alive + self.pad * (1 - alive)
            tokens.append(y)
            alive = alive & (y != self.eos).long()
            if t + 1 == T or not alive.any():
                break
            seen = torch.ones(n, length + t + 1, dtype=torch.long)
            out = self.model(input_ids=y[:, None], attention_mask=seen, use_cache=True, cache=out.cache)
        y = torch.stack(tokens, 1)
        y = y.masked_fill(y == self.pad, self.eos)
        y = torch.nn.functional.pad(y, (0, T - y.shape[1]), value=self.eos)
        after = (torch.cumsum((y == self.eos).long(), -1) - (y == self.eos).long()) > 0
        return y.masked_fill(after, self.eos)

    def step(self, seed: int = 0) -> float:
        """One outer step; returns the batch's mean reward."""
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(seed)
        task, G, eos = self.task, self.G, self.eos
        x = torch.randint(task.num_prompts, (self.B,), generator=self.generator)
        rng = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
        prompts = task.prompts[x].repeat_interleave(G, 0)
        y = self.sample(prompts, rng)
        is_eos = (y == eos).long()
        mask = ((torch.cumsum(is_eos, -1) - is_eos) == 0).float()
        x = x.repeat_interleave(G)
        reward = (y[:, :task.answers.shape[1]] == task.answers[x]).all(-1).float()
        groups = reward.view(-1, G)
        sigma = groups.std(-1, keepdim=True)
        adv = torch.where(sigma > 0, (groups - groups.mean(-1, keepdim=True)) / (sigma + STD_EPS),
                          torch.zeros_like(groups)).view(-1, 1)
        inputs = torch.cat([prompts, y.masked_fill(mask == 0, self.pad)], 1)
        attention = torch.cat([torch.ones_like(prompts), mask.long()], 1)
        z = self.model(input_ids=inputs, attention_mask=attention).logits
        z = z[:, prompts.shape[1] - 1:-1, :eos + 1]
        z = z.masked_fill((torch.arange(z.shape[1]) < task.min_new_tokens).view(-1, 1)
                          & (torch.arange(eos + 1) == eos), float("-inf"))
        logp_all = z - z.logsumexp(-1, keepdim=True)
        logp = logp_all.gather(-1, y.masked_fill(mask == 0, 0).unsqueeze(-1)).squeeze(-1)
        logp = logp.masked_fill(mask == 0, 0.0)
        d = logp - logp.detach()
        s = (d - (d - MAX_LOG_RATIO).clamp(min=0).detach()).exp()
        f = torch.minimum(s * adv, s.clamp(1.0 - CLIP, 1.0 + CLIP) * adv)
        weight = 1.0 / (y.shape[0] * mask.sum(-1, keepdim=True).clamp(min=1))
        loss = -((f * mask).sum(-1, keepdim=True) * weight).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(reward.mean())
