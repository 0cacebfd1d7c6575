"""Tiny policies for the lab: a tabular tree policy (vectorised over seeds), a tiny GRU and a tiny GPT-2.

All three speak the same two methods, over a leading *seed* dimension S (1 for the neural policies)::

    completions = policy.sample(task, prompt_idx, group_size, generators)  # (S, B*G, T), groups contiguous
    logp, entropy = policy.logprobs(task, prompt_idx.repeat_interleave(G, 1), completions)  # (S, N, T)

``prompt_idx`` (S, B) indexes ``task.prompts``. Completions hold token ids, filled with ``task.eos_id`` after
the first EOS; ``logp`` is log pi(y_t | x, y_<t) of the completion tokens (0 after the first EOS) and
``entropy`` the detached entropy of pi(. | x, y_<t). The action space is the task vocabulary plus EOS; EOS is
not allowed before ``min_new_tokens`` (in sampling *and* in the log-probs, so the ratio of Eq. 3 is exact).

Sampling draws its randomness from one ``torch.Generator`` per seed, always the same amount per call, so
runs that differ only in, say, reward scale see the same random numbers and diverge only when their
parameters choose differently (inverse-CDF sampling from pre-drawn uniforms; the GPT-2 seeds its sampler
from the generator). A single generator instead of the list draws every seed's numbers in one call (the
lab's ``streams="batched"``): faster for many seeds, but a seed's numbers then depend on how many run.

Example::

    import companion as cp
    task = cp.make_task("pick")
    policy = cp.TabularPolicy.for_task(task, num_seeds=64)      # 64 independent runs, one tensor
    policy.exact_expected_reward(task)                          # (64,) exact E[r], no sampling
    gpt = cp.TinyGPT2Policy.for_task(task, seed=0)              # 2 layers, 64 dims, local tokenizer
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor, nn

from companion._extras import require
from companion.tasks import Task

MAX_TABULAR_DEPTH = 8
MAX_TABULAR_ENTRIES = 50_000_000


def _inverse_cdf(probs: Tensor, uniforms: Tensor, max_token: int) -> Tensor:
    """Token j with cdf_{j-1} <= u * total < cdf_j (probs need not sum to 1); the same u picks the same
    token as long as the probabilities put j's interval around it."""
    cdf = torch.cumsum(probs.to(torch.float64), dim=-1)
    target = uniforms * cdf[..., -1]
    return (cdf <= target.unsqueeze(-1)).sum(-1).clamp(max=max_token)


def _fill_after_eos(tokens: Tensor, eos_id: int) -> Tensor:
    """Replace every token after the first EOS by EOS."""
    is_eos = (tokens == eos_id).long()
    after = (torch.cumsum(is_eos, dim=-1) - is_eos) > 0
    return tokens.masked_fill(after, eos_id)


def _token_logprobs(logits: Tensor, tokens: Tensor, mask: Tensor, eos_id: int,
                    min_new_tokens: int) -> tuple[Tensor, Tensor]:
    """logits (..., T, V+1) -> (log pi(token), detached entropy), both (..., T), 0 where mask is 0."""
    forbid = _eos_mask(logits.shape[-2], logits.shape[-1], eos_id, min_new_tokens, logits.device)
    logp_all = _log_softmax(logits.masked_fill(forbid, float("-inf")))
    return _pick(logp_all, tokens, mask), _entropy(logp_all) * mask


def _pick(logp_all: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """log pi of each token, (..., T), 0 where the mask is 0 (padding may hold any id)."""
    padding = mask == 0
    safe_tokens = tokens.masked_fill(padding, 0)
    return logp_all.gather(-1, safe_tokens.unsqueeze(-1)).squeeze(-1).masked_fill(padding, 0.0)


def _entropy(logp_all: Tensor) -> Tensor:
    """Entropy of each next-token distribution, detached (0 · log 0 = 0)."""
    finite = logp_all.detach().clamp(min=torch.finfo(logp_all.dtype).min)
    return -(finite.exp() * finite).sum(-1)


@functools.cache
def _eos_mask(length: int, width: int, eos_id: int, min_new_tokens: int, device: torch.device) -> Tensor:
    """(length, width) bool: True at EOS in the positions where EOS may not be chosen (cached: read-only)."""
    mask = torch.zeros(length, width, dtype=torch.bool, device=device)
    mask[:min_new_tokens, eos_id] = True
    return mask


def _log_softmax(logits: Tensor) -> Tensor:
    """log_softmax over the last axis, written out: torch's kernel is ~4x slower on tiny vocabularies."""
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def _unnormalised_probs(logits: Tensor) -> Tensor:
    """exp(logits - max): proportional to the softmax, which is all inverse-CDF sampling needs."""
    return (logits - logits.amax(dim=-1, keepdim=True)).exp()


def _check_vocab(policy_vocab: tuple[str, ...], task: Task) -> None:
    if tuple(policy_vocab) != tuple(task.vocab):
        raise ValueError(f"task vocab {task.vocab} does not match the policy's vocab {policy_vocab}; "
                         "build the policy with <Policy>.for_task(task)")


Generators = list[torch.Generator] | torch.Generator


def _check_generators(generators: Generators, num_seeds: int) -> None:
    if isinstance(generators, torch.Generator):
        return
    if len(generators) != num_seeds:
        raise ValueError(f"generators: need one per seed ({num_seeds}) or one for all, "
                         f"got {len(generators)}")


def _uniforms(generators: Generators, seeds: int, *shape: int) -> Tensor:
    """``(seeds, *shape)`` float64 uniforms: seed s from ``generators[s]``, or all from one generator."""
    if isinstance(generators, torch.Generator):
        return torch.rand(seeds, *shape, generator=generators, dtype=torch.float64)
    return torch.stack([torch.rand(*shape, generator=g, dtype=torch.float64) for g in generators])


def _first(generators: Generators) -> torch.Generator:
    return generators if isinstance(generators, torch.Generator) else generators[0]


def _prefix_columns(prefix: Tensor | None, num_seeds: int, batch: int, group_size: int,
                    device: torch.device) -> Tensor:
    """(S, B, k) prefix, one per prompt -> (S, B*G, k) with groups contiguous; empty when None."""
    if prefix is None:
        return torch.zeros(num_seeds, batch * group_size, 0, dtype=torch.long, device=device)
    return prefix.to(device).repeat_interleave(group_size, dim=1)


class TabularPolicy(nn.Module):
    """Independent softmax logits at every node of the prefix tree, for S seeds at once.

    ``logits`` has shape (S, P, num_nodes, V+1): seed, prompt, prefix node, next token (V ordinary tokens and
    EOS = V). The node of a prefix y_<t (t tokens, none EOS) is ``offset[t] + sum_j y_j V^(t-1-j)``, the
    base-V trie numbering with ``offset[t] = sum_{d<t} V^d``. Seeds never mix: Adam and SGD act per element,
    so each seed's slice evolves exactly as a run of that seed alone.
    """

    def __init__(self, vocab: tuple[str, ...], num_prompts: int, depth: int, *, num_seeds: int = 1,
                 init_scale: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not 1 <= depth <= MAX_TABULAR_DEPTH:
            raise ValueError(f"depth must lie in [1, {MAX_TABULAR_DEPTH}], got {depth}")
        if num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
        self.vocab = tuple(vocab)
        self.num_seeds, self.num_prompts, self.depth = num_seeds, num_prompts, depth
        V = len(self.vocab)
        offsets = [sum(V ** d for d in range(t)) for t in range(depth + 1)]
        num_nodes = offsets[depth]
        entries = num_seeds * num_prompts * num_nodes * (V + 1)
        if entries > MAX_TABULAR_ENTRIES:
            raise ValueError(f"tabular policy too large: {entries} logits (num_seeds={num_seeds}, "
                             f"num_prompts={num_prompts}, depth={depth}, vocab={V}); lower depth or seeds")
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self._node_offsets = tuple(offsets)  # the same, as Python ints for the sampling loop
        self._frozen_table: tuple[tuple[int, int, int], Tensor, Tensor] | None = None
        init = torch.zeros(num_seeds, num_prompts, num_nodes, V + 1, dtype=dtype)
        if init_scale > 0:
            for s in range(num_seeds):  # seed s uses generator seed + s, as a single run with that seed
                g = torch.Generator().manual_seed(seed + s)
                init[s] = init_scale * torch.randn(init[s].shape, generator=g, dtype=dtype)
        self.logits = nn.Parameter(init)

    @classmethod
    def for_task(cls, task: Task, *, num_seeds: int = 1, init_scale: float = 0.0, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> TabularPolicy:
        """A policy over ``task``'s prompts, vocab + EOS, and depth ``task.max_new_tokens``."""
        return cls(task.vocab, task.num_prompts, task.max_new_tokens, num_seeds=num_seeds,
                   init_scale=init_scale, seed=seed, dtype=dtype)

    @property
    def eos_id(self) -> int:
        return len(self.vocab)

    def _check(self, task: Task, max_new_tokens: int) -> None:
        _check_vocab(self.vocab, task)
        if task.num_prompts != self.num_prompts:
            raise ValueError(f"task has {task.num_prompts} prompts, the policy {self.num_prompts}")
        if max_new_tokens > self.depth:
            raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the tree depth {self.depth}")

    def node_ids(self, completions: Tensor) -> Tensor:
        """(..., T) tokens -> (..., T) node of the prefix before each position (EOS read as token V-1):
        ``offset[t] + sum_{j<t} y_j V^(t-1-j)``, one product with a (T, T) matrix of powers of V (exact
        in float64: at most V^MAX_TABULAR_DEPTH)."""
        V, T = len(self.vocab), completions.shape[-1]
        powers = [[float(V ** (t - 1 - j)) if j < t else 0.0 for t in range(T)] for j in range(T)]
        powers = torch.tensor(powers, dtype=torch.float64, device=completions.device)
        digits = completions.clamp(max=V - 1).to(torch.float64)
        return (digits @ powers).long() + self.offsets[:T]

    def _row_base(self, prompt_idx: Tensor) -> Tensor:
        """(S, N) prompts -> (S, N) flat index of each completion's (seed, prompt) table in ``logits``."""
        S, P, num_nodes, _ = self.logits.shape
        seeds = torch.arange(S, device=prompt_idx.device).unsqueeze(1)
        return (seeds * P + prompt_idx) * num_nodes

    def _rows(self, rows: Tensor, table: Tensor | None = None) -> Tensor:
        """Rows of ``logits`` (or of a table of the same layout) by flat index: (...) -> (..., V+1)."""
        table = self.logits if table is None else table
        width = table.shape[-1]
        return table.view(-1, width).index_select(0, rows.flatten()).view(*rows.shape, width)

    @torch.no_grad()
    def sample(self, task: Task, prompt_idx: Tensor, group_size: int, generators: Generators, *,
               prefix: Tensor | None = None, max_new_tokens: int | None = None,
               min_new_tokens: int | None = None) -> Tensor:
        """(S, B) prompts -> (S, B*G, max_new_tokens) completions; ``prefix`` (S, B, k) is written as is."""
        T = task.max_new_tokens if max_new_tokens is None else max_new_tokens
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        self._check(task, T)
        _check_generators(generators, self.num_seeds)
        S, B = prompt_idx.shape
        N, device = B * group_size, self.logits.device
        uniforms = _uniforms(generators, S, N, T).to(device)
        prompts = prompt_idx.to(device).repeat_interleave(group_size, dim=1)
        head = _prefix_columns(prefix, S, B, group_size, device)
        tokens = torch.full((S, N, T), self.eos_id, dtype=torch.long, device=device)
        tokens[..., :head.shape[-1]] = head
        V, index = len(self.vocab), torch.zeros(S, N, dtype=torch.long, device=device)
        base = self._row_base(prompts)
        for t in range(T):
            if t >= head.shape[-1]:
                logits = self._rows(base + (index + self._node_offsets[t]))
                if t < m:
                    logits = logits.index_fill(-1, self._eos_index(device), float("-inf"))
                token = _inverse_cdf(_unnormalised_probs(logits), uniforms[..., t], V - 1 if t < m else V)
                tokens[..., t] = token
            else:
                token = tokens[..., t]
            index = index * V + token.clamp(max=V - 1)
        return _fill_after_eos(tokens, self.eos_id)

    def _eos_index(self, device: torch.device) -> Tensor:
        return torch.tensor([self.eos_id], device=device)

    def logprobs(self, task: Task, prompt_idx: Tensor, completions: Tensor, *,
                 min_new_tokens: int | None = None) -> tuple[Tensor, Tensor]:
        """(S, N) prompts, (S, N, T) completions -> (log-probs, entropy), each (S, N, T)."""
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        self._check(task, completions.shape[-1])
        rows = self._row_base(prompt_idx.to(completions.device)).unsqueeze(-1) + self.node_ids(completions)
        mask = task.completion_mask(completions).to(self.logits.dtype)
        trained = self.logits.requires_grad
        if trained and (torch.is_grad_enabled() or rows.numel() < self.logits[..., 0].numel()):
            return _token_logprobs(self._rows(rows), completions, mask, self.eos_id, m)
        logp_table, entropy_table = self._frozen_tables(m)
        return _pick(self._rows(rows, logp_table), completions, mask), entropy_table.view(-1)[rows] * mask

    @torch.no_grad()
    def _frozen_tables(self, min_new_tokens: int) -> tuple[Tensor, Tensor]:
        """log pi of every node's next token, and every node's entropy, computed again only when the logits
        change: row by row the same operations as on a batch of completions, so the same numbers. Used when no
        gradient is needed and the logits are frozen (the lab's pi_ref) or the query has more rows than the
        table (an exact expectation over every completion)."""
        key = (self.logits._version, self.logits.data_ptr(), min_new_tokens)
        if self._frozen_table is None or self._frozen_table[0] != key:
            device, V = self.logits.device, len(self.vocab)
            depth = torch.repeat_interleave(torch.arange(self.depth, device=device),
                                            torch.tensor([V**t for t in range(self.depth)], device=device))
            forbid = _eos_mask(self.depth, V + 1, self.eos_id, min_new_tokens, device)[depth]
            logp_all = _log_softmax(self.logits.detach().masked_fill(forbid, float("-inf")))
            self._frozen_table = (key, logp_all, _entropy(logp_all))
        return self._frozen_table[1], self._frozen_table[2]

    def sequences(self, task: Task) -> Tensor:
        """Every possible completion of length ``task.max_new_tokens`` (EOS-filled), (num_sequences, T)."""
        V, T = len(self.vocab), task.max_new_tokens
        seqs = []
        for length in range(T + 1):  # `length` ordinary tokens, then EOS (or truncation when length == T)
            body = torch.cartesian_prod(*[torch.arange(V)] * length) if length > 1 else (
                torch.arange(V).unsqueeze(1) if length == 1 else torch.zeros(1, 0, dtype=torch.long))
            seqs.append(torch.cat([body, torch.full((body.shape[0], T - length), self.eos_id)], dim=1))
        return torch.cat(seqs)

    @torch.no_grad()
    def exact_expected_reward(self, task: Task) -> Tensor:
        """(S,) exact E_x E_{y~pi}[r(x, y)] over uniform prompts, by enumerating every completion."""
        seqs = self.sequences(task).to(self.logits.device)
        S, P, Q = self.num_seeds, task.num_prompts, seqs.shape[0]
        completions = seqs.expand(S * P, Q, -1).reshape(S, P * Q, -1)
        prompt_idx = torch.arange(P, device=seqs.device).repeat_interleave(Q).expand(S, -1)
        logp, _ = self.logprobs(task, prompt_idx, completions)
        prob = logp.sum(-1).exp()
        reward = task.reward(prompt_idx, completions).to(prob.dtype)
        return (prob * reward).sum(-1) / P


class GRUPolicy(nn.Module):
    """A one-layer GRU language model: parameters shared across tokens (the realistic case for Props 1, 3)."""

    num_seeds = 1

    def __init__(self, vocab: tuple[str, ...], *, hidden: int = 32, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.vocab = tuple(vocab)
        V = len(self.vocab)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(V + 1, hidden, dtype=dtype)
            self.gru = nn.GRU(hidden, hidden, batch_first=True, dtype=dtype)
            self.head = nn.Linear(hidden, V + 1, dtype=dtype)

    @classmethod
    def for_task(cls, task: Task, *, hidden: int = 32, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> GRUPolicy:
        return cls(task.vocab, hidden=hidden, seed=seed, dtype=dtype)

    @property
    def eos_id(self) -> int:
        return len(self.vocab)

    @torch.no_grad()
    def sample(self, task: Task, prompt_idx: Tensor, group_size: int, generators: Generators, *,
               prefix: Tensor | None = None, max_new_tokens: int | None = None,
               min_new_tokens: int | None = None) -> Tensor:
        """(1, B) prompts -> (1, B*G, max_new_tokens) completions, inverse-CDF from the seed's uniforms."""
        T = task.max_new_tokens if max_new_tokens is None else max_new_tokens
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        _check_vocab(self.vocab, task)
        _check_generators(generators, 1)
        B, device = prompt_idx.shape[1], self.head.weight.device
        N = B * group_size
        uniforms = _uniforms(generators, 1, N, T)[0].to(device)
        head = _prefix_columns(prefix, 1, B, group_size, device)[0]
        prompts = task.prompts.to(device)[prompt_idx[0].to(device)].repeat_interleave(group_size, dim=0)
        out, h = self.gru(self.embed(prompts))
        logits = self.head(out[:, -1])
        tokens = torch.full((N, T), self.eos_id, dtype=torch.long, device=device)
        for t in range(T):
            if t < head.shape[-1]:
                tokens[:, t] = head[:, t]
            else:
                if t < m:
                    logits[:, self.eos_id] = float("-inf")
                tokens[:, t] = _inverse_cdf(_unnormalised_probs(logits), uniforms[:, t],
                                            self.eos_id - 1 if t < m else self.eos_id)
            out, h = self.gru(self.embed(tokens[:, t:t + 1]), h)
            logits = self.head(out[:, -1])
        return _fill_after_eos(tokens, self.eos_id).unsqueeze(0)

    def logprobs(self, task: Task, prompt_idx: Tensor, completions: Tensor, *,
                 min_new_tokens: int | None = None) -> tuple[Tensor, Tensor]:
        """(1, N) prompts, (1, N, T) completions -> (log-probs, entropy), each (1, N, T); teacher-forced."""
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        _check_vocab(self.vocab, task)
        prompts = task.prompts.to(completions.device)[prompt_idx[0]]
        tokens = completions[0]
        out, _ = self.gru(self.embed(torch.cat([prompts, tokens[:, :-1]], dim=1)))
        logits = self.head(out[:, prompts.shape[1] - 1:])
        mask = task.completion_mask(tokens).to(logits.dtype)
        logp, entropy = _token_logprobs(logits, tokens, mask, self.eos_id, m)
        return logp.unsqueeze(0), entropy.unsqueeze(0)


def build_tokenizer(vocab: tuple[str, ...]):
    """A local word-level tokenizer: one id per single-character task token, then </s>, <pad>, <unk>.

    Built with the ``tokenizers`` library and wrapped in ``PreTrainedTokenizerFast``; nothing is downloaded.
    """
    require("lab", "tokenizers", "transformers", feature="companion.policies.build_tokenizer")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = {tok: i for i, tok in enumerate(vocab)}
    ids.update({"</s>": len(vocab), "<pad>": len(vocab) + 1, "<unk>": len(vocab) + 2})
    core = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


class TinyGPT2Policy(nn.Module):
    """A GPT-2 built from ``GPT2Config`` (2 layers, 64 dims by default) with a local tokenizer; no download.

    Sampling draws what ``model.generate(do_sample=True, num_return_sequences=G)`` would, with an attention
    mask, explicit pad/EOS ids, ``min_new_tokens`` and the tokenizer's extra tokens (<pad>, <unk>)
    suppressed, in a loop of its own with the same model calls and a KV cache (``generate``'s set-up costs
    more than the tiny model's forward passes; ``tests/test_policies.py`` checks the tokens against it).
    Log-probs are those of the completion tokens only, over the same action space (task vocab + EOS).
    ``model.config.pad_token_id`` stays None on purpose: finished rows are fed their pad token without a
    mask, which would trigger a spurious padding warning; the pad id is given to the tokenizer explicitly.
    """

    num_seeds = 1

    def __init__(self, vocab: tuple[str, ...], *, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                 n_positions: int = 32, seed: int = 0, model=None, tokenizer=None) -> None:
        super().__init__()
        require("lab", "transformers", "tokenizers", feature="TinyGPT2Policy")
        from transformers import GPT2Config, GPT2LMHeadModel

        self.vocab = tuple(vocab)
        self.tokenizer = build_tokenizer(self.vocab) if tokenizer is None else tokenizer
        if model is None:
            config = GPT2Config(vocab_size=len(self.tokenizer), n_positions=n_positions, n_embd=n_embd,
                                n_layer=n_layer, n_head=n_head, bos_token_id=self.eos_id,
                                eos_token_id=self.eos_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = GPT2LMHeadModel(config)
        self.model = model.eval()  # no dropout: pi_theta must be a function of theta (ratio = 1 at s = 1)
        self._check_tokenizer()
        forward = inspect.signature(self.model.forward).parameters  # transformers 5 renamed the KV cache
        self._cache_argument = "cache" if "cache" in forward else "past_key_values"

    @classmethod
    def for_task(cls, task: Task, **kwargs) -> TinyGPT2Policy:
        return cls(task.vocab, **kwargs)

    @property
    def eos_id(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def context(self) -> int:
        return self.model.config.n_positions

    def _check_tokenizer(self) -> None:
        tok, config = self.tokenizer, self.model.config
        if len(tok) != config.vocab_size:
            raise ValueError(f"tokenizer has {len(tok)} tokens but the model's vocab_size is "
                             f"{config.vocab_size}; build both from the same vocab")
        ids = tok.convert_tokens_to_ids([*self.vocab, tok.eos_token])
        if ids != list(range(len(self.vocab) + 1)):
            raise ValueError(f"tokenizer must map the task vocab {self.vocab} and its EOS to ids "
                             f"0..{len(self.vocab)}; got {ids}")
        if tok.pad_token_id is None or tok.pad_token_id <= self.eos_id:
            raise ValueError("tokenizer needs a pad token distinct from the task vocab and EOS")

    def _check(self, task: Task, max_new_tokens: int) -> None:
        _check_vocab(self.vocab, task)
        if task.prompt_len + max_new_tokens > self.context:
            raise ValueError(f"prompt ({task.prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"the model context n_positions={self.context}")

    def decode(self, ids: Tensor) -> str:
        return self.tokenizer.decode(ids.tolist())

    @torch.no_grad()
    def sample(self, task: Task, prompt_idx: Tensor, group_size: int, generators: Generators, *,
               prefix: Tensor | None = None, max_new_tokens: int | None = None,
               min_new_tokens: int | None = None) -> Tensor:
        """(1, B) prompts -> (1, B*G, max_new_tokens) completions, sampled with a KV cache exactly as
        ``model.generate(do_sample=True, num_return_sequences=G, min_new_tokens=..., suppress_tokens=...)``
        samples them from a generator seeded by ``generators[0]`` (the same tokens, without its set-up)."""
        T = task.max_new_tokens if max_new_tokens is None else max_new_tokens
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        self._check(task, T)
        _check_generators(generators, 1)
        device = self.model.device
        seed = int(torch.randint(2**62, (1,), generator=_first(generators)))
        rng = torch.Generator(device).manual_seed(seed)
        prompts = task.prompts.to(device)[prompt_idx[0].to(device)]
        k = 0 if prefix is None else prefix.shape[-1]
        inputs = prompts if prefix is None else torch.cat([prompts, prefix[0].to(device)], dim=1)
        inputs = inputs.repeat_interleave(group_size, dim=0)
        new = self._sample_tokens(inputs, T - k, max(m - k, 0), rng)
        tokens = torch.cat([inputs[:, prompts.shape[1]:], new], dim=1)
        tokens = tokens.masked_fill(tokens == self.pad_id, self.eos_id)
        tokens = nn.functional.pad(tokens, (0, T - tokens.shape[1]), value=self.eos_id)
        return _fill_after_eos(tokens, self.eos_id).unsqueeze(0)

    @torch.no_grad()
    def _sample_tokens(self, inputs: Tensor, max_new_tokens: int, min_new_tokens: int,
                       rng: torch.Generator) -> Tensor:
        """Multinomial sampling at temperature 1 with a KV cache, as ``generate`` does it: the same model
        calls (prompt, then one token at a time with the cache and a mask of ones), EOS and the extra tokens
        set to -inf, finished rows continued with the pad token, a stop when every row has ended."""
        n, length = inputs.shape
        eos, pad = self.eos_id, self.pad_id
        suppressed = torch.tensor(self._extra_token_ids(), device=inputs.device)
        unfinished = torch.ones(n, dtype=torch.long, device=inputs.device)
        out = self.model(input_ids=inputs, attention_mask=torch.ones_like(inputs), use_cache=True)
        new: list[Tensor] = []
        for step in range(max_new_tokens):
            scores = out.logits[:, -1].to(copy=True, dtype=torch.float32)
            if step < min_new_tokens:
                scores[:, eos] = float("-inf")
            scores[:, suppressed] = float("-inf")
            token = torch.multinomial(nn.functional.softmax(scores, dim=-1), 1, generator=rng).squeeze(1)
            token = token * unfinished + pad * (1 - unfinished)
            new.append(token)
            unfinished = unfinished & (token != eos).long()
            if step + 1 == max_new_tokens or not bool(unfinished.any()):
                break
            mask = torch.ones(n, length + step + 1, dtype=torch.long, device=inputs.device)
            out = self.model(input_ids=token[:, None], attention_mask=mask, use_cache=True,
                             **{self._cache_argument: out[self._cache_argument]})
        return torch.stack(new, dim=1) if new else inputs.new_zeros(n, 0)

    def _extra_token_ids(self) -> list[int]:
        return list(range(self.eos_id + 1, len(self.tokenizer)))

    def logprobs(self, task: Task, prompt_idx: Tensor, completions: Tensor, *,
                 min_new_tokens: int | None = None) -> tuple[Tensor, Tensor]:
        """(1, N) prompts, (1, N, T) completions -> (log-probs, entropy), each (1, N, T); one forward pass."""
        m = task.min_new_tokens if min_new_tokens is None else min_new_tokens
        self._check(task, completions.shape[-1])
        tokens = completions[0]
        prompts = task.prompts.to(tokens.device)[prompt_idx[0]]
        mask = task.completion_mask(tokens)
        inputs = torch.cat([prompts, tokens.masked_fill(mask == 0, self.pad_id)], dim=1)
        attention = torch.cat([torch.ones_like(prompts), mask.long()], dim=1)
        logits = self.model(input_ids=inputs, attention_mask=attention).logits
        logits = logits[:, prompts.shape[1] - 1:-1, :self.eos_id + 1]
        logp, entropy = _token_logprobs(logits, tokens, mask.to(logits.dtype), self.eos_id, m)
        return logp.unsqueeze(0), entropy.unsqueeze(0)


def num_parameters(policy: nn.Module) -> int:
    """Trainable parameters (per seed for the tabular policy)."""
    total = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return total // getattr(policy, "num_seeds", 1)

