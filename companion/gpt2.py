"""S tiny GPT-2s, one per seed, trained as one tensor program: seed bands for a transformer in seconds.

``TinyGPT2Policy`` wraps one ``GPT2LMHeadModel``; a run per seed pays Python's overhead per seed, which is
most of the time of a tiny model. ``StackedGPT2Policy`` holds the parameters of S such models with a
leading seed axis (seed s is ``TinyGPT2Policy(seed=seed + s)``, weight for weight) and computes GPT-2's
forward pass for all of them at once: the same maths as ``transformers``' GPT-2 (pre-LayerNorm blocks,
causal attention, tanh GELU, the head tied to the token embedding), checked against it in the tests::

    import companion as cp
    task = cp.make_task("think")
    policy = cp.StackedGPT2Policy.for_task(task, num_seeds=8)   # 8 GPT-2s of 1 layer, 32 dims
    hist = cp.lab.train(policy, task, cp.Objective.preset("dr_grpo"), steps=20)   # (rows, 8) columns
    policy.unstack(3)                                           # seed 3 as a TinyGPT2Policy

Seeds never mix: every parameter has a leading seed axis, and AdamW acts per element, so each seed's slice
evolves as a run of that seed alone (as ``TabularPolicy``'s seeds do). Sampling is inverse-CDF from each
seed's uniforms (as the tabular policy's), so its random numbers, not its distribution, differ from
``TinyGPT2Policy.sample``'s ``model.generate``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from companion.policies import (
    TinyGPT2Policy,
    _check_generators,
    _check_vocab,
    _fill_after_eos,
    _inverse_cdf,
    _prefix_columns,
    _token_logprobs,
    _unnormalised_probs,
)
from companion.tasks import Task

TIED_HEAD = "lm_head.weight"  # GPT-2's output layer is the token embedding, transposed


class StackedGPT2Policy(nn.Module):
    """``num_seeds`` GPT-2 language models from one ``GPT2Config``, parameters stacked on a leading seed axis.

    Build it with :meth:`for_task` (fresh models, seed ``seed + s`` for index s) or :meth:`from_policies`
    (any ``TinyGPT2Policy`` instances of one configuration); :meth:`unstack` gives one seed back as a
    ``TinyGPT2Policy``. ``sample`` and ``logprobs`` speak the lab's (S, ...) shapes.
    """

    def __init__(self, policies: list[TinyGPT2Policy]) -> None:
        super().__init__()
        if not policies:
            raise ValueError("policies: need at least one TinyGPT2Policy to stack")
        first = policies[0]
        for p in policies:
            if not isinstance(p, TinyGPT2Policy):
                raise TypeError(f"policies must be TinyGPT2Policy instances, got {type(p).__name__}")
            if p.vocab != first.vocab or p.model.config.to_dict() != first.model.config.to_dict():
                raise ValueError("policies: every model must have the same vocab and GPT2Config")
        config = first.model.config
        if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function must be GPT-2's tanh GELU ('gelu_new'), got "
                             f"{config.activation_function!r}")
        if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn \
                or config.add_cross_attention:
            raise ValueError("StackedGPT2Policy computes plain GPT-2 blocks: no "
                             "scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn or cross-attention")
        self.vocab, self.tokenizer, self.config = first.vocab, first.tokenizer, config
        self.num_seeds = len(policies)
        states = [p.model.state_dict() for p in policies]
        self.names = [n for n, v in states[0].items() if n != TIED_HEAD and v.is_floating_point()]
        self.weights = nn.ParameterDict({
            _key(n): nn.Parameter(torch.stack([s[n].detach() for s in states]).clone()) for n in self.names})

    @classmethod
    def for_task(cls, task: Task, *, num_seeds: int = 1, n_layer: int = 1, n_embd: int = 32, n_head: int = 2,
                 n_positions: int = 32, seed: int = 0) -> StackedGPT2Policy:
        """Fresh models for ``task``; index s is initialised as ``TinyGPT2Policy(seed=seed + s)``."""
        if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
            raise ValueError(f"num_seeds must be an int >= 1, got {num_seeds!r}")
        return cls([TinyGPT2Policy.for_task(task, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                            n_positions=n_positions, seed=seed + s)
                    for s in range(num_seeds)])

    @classmethod
    def from_policies(cls, policies: list[TinyGPT2Policy]) -> StackedGPT2Policy:
        return cls(list(policies))

    def unstack(self, s: int) -> TinyGPT2Policy:
        """Seed index ``s`` as a ``TinyGPT2Policy`` (a ``transformers`` model with a copy of its weights)."""
        if not 0 <= s < self.num_seeds:
            raise IndexError(f"seed index {s} out of range for {self.num_seeds} seeds")
        from transformers import GPT2LMHeadModel

        with torch.random.fork_rng(devices=[]):
            model = GPT2LMHeadModel(self.config)
        state = {n: self.weights[_key(n)][s].detach().clone().cpu() for n in self.names}
        model.load_state_dict(state, strict=False)
        model.tie_weights()
        dtype = self.weights[_key(self.names[0])].dtype
        return TinyGPT2Policy(self.vocab, model=model.to(dtype), tokenizer=self.tokenizer)

    @property
    def eos_id(self) -> int:
        return len(self.vocab)

    @property
    def context(self) -> int:
        return self.config.n_positions

    def _w(self, name: str) -> Tensor:
        return self.weights[_key(name)]

    # --- GPT-2's forward pass, every seed at once -------------------------------------------------------
    def forward(self, ids: Tensor, attention: Tensor) -> Tensor:
        """ids, attention (S, N, L) -> logits over the task vocab and EOS, (S, N, L, V+1)."""
        S, N, L = ids.shape
        if self.context < L:
            raise ValueError(f"sequence of {L} tokens exceeds the model context n_positions={self.context}")
        wte = self._w("transformer.wte.weight")  # (S, vocab, d)
        seeds = torch.arange(S, device=ids.device).view(S, 1, 1)
        h = wte[seeds, ids] + self._w("transformer.wpe.weight")[:, :L].unsqueeze(1)
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
        allowed = causal & (attention > 0).view(S, N, 1, 1, L)  # (S, N, 1, L, L): queries x keys
        for i in range(self.config.n_layer):
            h = h + self._attention(self._layer_norm(h, f"transformer.h.{i}.ln_1"), f"transformer.h.{i}.attn",
                                    allowed)
            h = h + self._mlp(self._layer_norm(h, f"transformer.h.{i}.ln_2"), f"transformer.h.{i}.mlp")
        h = self._layer_norm(h, "transformer.ln_f")
        head = wte[:, :self.eos_id + 1]  # the tied head, only the rows of the action space
        return h @ head.transpose(1, 2).unsqueeze(1)

    def _layer_norm(self, x: Tensor, name: str) -> Tensor:
        y = functional.layer_norm(x, x.shape[-1:], eps=self.config.layer_norm_epsilon)
        return y * self._w(f"{name}.weight").view(x.shape[0], 1, 1, -1) + self._w(f"{name}.bias").view(
            x.shape[0], 1, 1, -1)

    def _conv1d(self, x: Tensor, name: str) -> Tensor:
        """GPT-2's Conv1D, x @ W + b with W (in, out): one (N·L, in) @ (in, out) product per seed."""
        S, N, L, d = x.shape
        bias, weight = self._w(f"{name}.bias").unsqueeze(1), self._w(f"{name}.weight")
        out = torch.baddbmm(bias, x.reshape(S, N * L, d), weight)
        return out.view(S, N, L, -1)

    def _attention(self, x: Tensor, name: str, allowed: Tensor) -> Tensor:
        S, N, L, d = x.shape
        heads = self.config.n_head
        q, k, v = self._conv1d(x, f"{name}.c_attn").split(d, dim=-1)
        q, k, v = (t.view(S, N, L, heads, d // heads).transpose(2, 3) for t in (q, k, v))  # (S, N, H, L, hd)
        scores = (q @ k.transpose(-1, -2)) * (d // heads) ** -0.5
        weights = _softmax(scores.masked_fill(~allowed, float("-inf")))
        out = (weights @ v).transpose(2, 3).reshape(S, N, L, d)
        return self._conv1d(out, f"{name}.c_proj")

    def _mlp(self, x: Tensor, name: str) -> Tensor:
        hidden = functional.gelu(self._conv1d(x, f"{name}.c_fc"), approximate="tanh")  # GPT-2's gelu_new
        return self._conv1d(hidden, f"{name}.c_proj")

    # --- the lab's interface ----------------------------------------------------------------------------
    def _check(self, task: Task, max_new_tokens: int) -> None:
        _check_vocab(self.vocab, task)
        if task.prompt_len + max_new_tokens > self.context:
            raise ValueError(f"prompt ({task.prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"the model context n_positions={self.context}")

    @torch.no_grad()
    def sample(self, task: Task, prompt_idx: Tensor, group_size: int, generators: list[torch.Generator], *,
               prefix: Tensor | None = None, max_new_tokens: int | None = None,
               min_new_tokens: int | None = None) -> Tensor:
        """(S, B) prompts -> (S, B*G, max_new_tokens) completions, groups contiguous; ``prefix`` (S, B, k) is
        written as is. One forward pass per new token over the whole sequence (the sequences are short)."""
        T = task.max_new_tokens if max_new_tokens is None else max_new_tokens
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        self._check(task, T)
        _check_generators(generators, self.num_seeds)
        S, B = prompt_idx.shape
        N, device = B * group_size, self._w("transformer.wte.weight").device
        uniforms = torch.stack([torch.rand(N, T, generator=g, dtype=torch.float64) for g in generators])
        uniforms = uniforms.to(device)
        prompts = task.prompts.to(device)[prompt_idx.to(device).repeat_interleave(group_size, dim=1)]
        head = _prefix_columns(prefix, S, B, group_size, device)
        tokens = torch.full((S, N, T), self.eos_id, dtype=torch.long, device=device)
        tokens[..., :head.shape[-1]] = head
        for t in range(head.shape[-1], T):
            ids = torch.cat([prompts, tokens[..., :t]], dim=-1)
            logits = self(ids, torch.ones_like(ids))[..., -1, :]
            if t < m:
                logits = logits.clone()
                logits[..., self.eos_id] = float("-inf")
            tokens[..., t] = _inverse_cdf(_unnormalised_probs(logits), uniforms[..., t],
                                          self.eos_id - 1 if t < m else self.eos_id)
        return _fill_after_eos(tokens, self.eos_id)

    def logprobs(self, task: Task, prompt_idx: Tensor, completions: Tensor, *,
                 min_new_tokens: int | None = None) -> tuple[Tensor, Tensor]:
        """(S, N) prompts, (S, N, T) completions -> (log-probs, entropy), each (S, N, T); one forward pass,
        the completion's tokens after EOS masked out of the attention (as ``TinyGPT2Policy.logprobs``)."""
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        self._check(task, completions.shape[-1])
        prompts = task.prompts.to(completions.device)[prompt_idx.to(completions.device)]
        mask = task.completion_mask(completions)
        ids = torch.cat([prompts, completions.masked_fill(mask == 0, 0)], dim=-1)
        attention = torch.cat([torch.ones_like(prompts), mask.long()], dim=-1)
        logits = self(ids, attention)[..., prompts.shape[-1] - 1:-1, :]
        return _token_logprobs(logits, completions, mask.to(logits.dtype), self.eos_id, m)


def _softmax(x: Tensor) -> Tensor:
    """softmax over the last axis, written out: torch's kernel is ~6x slower on rows of a dozen keys."""
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def _key(name: str) -> str:
    """A ``state_dict`` name as a ``ParameterDict`` key (no dots allowed there)."""
    return name.replace(".", "__")
