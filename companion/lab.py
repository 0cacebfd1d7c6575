"""The lab: sample B prompts x G completions, then mu optimizer steps on that fixed batch (the GRPO loop).

Every chapter trains with ``train``; a run is a few lines::

    import companion as cp
    task = cp.make_task("pick", length="short")
    policy = cp.TabularPolicy.for_task(task, num_seeds=64)          # or GRUPolicy / TinyGPT2Policy
    hist = cp.lab.train(policy, task, cp.Objective.preset("grpo"), steps=100, group_size=8, inner_steps=2)
    hist["reward"].shape                                            # (100 * 2, 64): one row per inner step

Outer step k: draw ``prompts_per_step`` prompts and ``group_size`` completions each (groups contiguous),
score them with the task's verifiable reward, and compute pi_old (the current policy) and pi_ref (the
policy at the start of training) log-probs. Then ``inner_steps`` times: log-probs under theta, the
objective's loss (Eq. 1), backward, optimizer step, one record.

Sampling modes: ``"on_policy"`` samples from the current policy with each seed's shared random stream, so
runs that differ only in, say, ``task.reward_scale`` see the same random numbers and diverge only when their
parameters choose differently; ``"fixed"`` samples from the frozen initial policy, so the data never depend
on theta (exact comparisons of objectives or optimizers on the same batches).

Seeds: a policy with S seeds (``TabularPolicy(num_seeds=S)``) trains S independent runs in one tensor
program; seed s uses ``seed + s`` and its records equal those of a single-seed run with that seed.
``streams="batched"`` draws every seed's random numbers from one generator instead (``seed``), in one
call: faster for many seeds, but seed s's numbers then depend on S, so that guarantee is gone. The book's
chapters use the default, ``"per_seed"``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from companion.notebook import Progress, under_pytest
from companion.objective import Objective, _finite_by_sum
from companion.optim import InstrumentedAdamW
from companion.policies import Generators
from companion.tasks import Task

Sampling = Literal["on_policy", "fixed"]
SAMPLING_MODES = ("on_policy", "fixed")
Streams = Literal["per_seed", "batched"]
STREAMS = ("per_seed", "batched")
PROGRESS_AFTER_SECONDS = 3.0
OptimizerSpec = torch.optim.Optimizer | Callable[[Any], torch.optim.Optimizer] | None
StepHook = Callable[[int, int, "Batch"], None]  # on_step(outer_step, inner_step, batch)


@dataclass
class History:
    """Columnar records, one row per inner step. ``h[name]`` is a numpy array.

    Shapes: (R,) for a single-seed policy and (R, S) for S seeds; ``prefix_prob`` adds a last axis over the
    template tokens. ``outer_step`` and ``inner_step`` are (R,) integers. Columns: reward, accuracy, length,
    tied_fraction (groups with equal rewards), entropy, kl_old, kl_ref, ratio_min, ratio_max, loss, the
    objective's scalar diagnostics (clip fractions, policy_loss, regulariser), ``prefix_prob``
    (with a template), ``opt_*`` (optimizer diagnostics, when the optimizer keeps a ``history``), and
    with ``train(after_step=True)`` / ``train(target_kl=...)`` the ``*_after`` columns and ``stopped``.
    """

    columns: dict[str, np.ndarray]
    num_seeds: int
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {sorted(self.columns)}")
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return len(self.columns["outer_step"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def keys(self) -> list[str]:
        return list(self.columns)

    def seed(self, s: int) -> History:
        """The records of seed index s alone (as a single-seed History)."""
        if self.num_seeds == 1:
            return self
        cols = {k: (v if v.ndim == 1 else v[:, s]) for k, v in self.columns.items()}
        return History(cols, 1, self.config)

    def outer(self, name: str) -> np.ndarray:
        """``h[name]`` at the first inner step of every outer step (one row per batch)."""
        return self[name][self.columns["inner_step"] == 0]

    def __repr__(self) -> str:
        return f"History({len(self)} records, {self.num_seeds} seed(s), columns={sorted(self.columns)})"


# --- set-up helpers ------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present, else CPU (or what the caller names)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def thread_count() -> int:
    """``COMPANION_THREADS`` (default 1: tiny models are fastest with one thread)."""
    raw = os.environ.get("COMPANION_THREADS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"COMPANION_THREADS must be a positive integer, got {raw!r}")
    return int(raw)


@contextlib.contextmanager
def cpu_threads(device: torch.device) -> Iterator[None]:
    """On CPU run with :func:`thread_count` threads."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(thread_count())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build_optimizer(optimizer: OptimizerSpec, params: list[nn.Parameter],
                     lr: float) -> torch.optim.Optimizer:
    if optimizer is None:  # torch's AdamW step, bit for bit, without its CPU slow paths (companion.optim)
        return InstrumentedAdamW(params, lr=lr, diagnostics="off")
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(params)
    raise TypeError(f"optimizer must be a torch optimizer, a callable params -> optimizer, or None; "
                    f"got {type(optimizer).__name__}")


def _check_arguments(task: Task, steps: int, group_size: int, prompts_per_step: int, inner_steps: int,
                     sampling: str, streams: str) -> None:
    if not isinstance(task, Task):
        raise TypeError(f"task must be a companion Task (cp.make_task(...)), got {type(task).__name__}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2: group-relative advantages (Eq. 2) compare each "
                         f"completion with the rest of its group; got {group_size}")
    for name, value, low in (("steps", steps, 0), ("prompts_per_step", prompts_per_step, 1),
                             ("inner_steps", inner_steps, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if streams not in STREAMS:
        raise ValueError(f"streams must be one of {STREAMS}, got {streams!r}")


# --- statistics per seed -------------------------------------------------------------------------------
def _masked_mean(x: Tensor, mask: Tensor, count: Tensor | None = None) -> Tensor:
    """(S, N, T) -> (S,): mean over every token in the loss (``count``: the tokens per seed, if known)."""
    return (x * mask).sum((1, 2)) / (_token_count(mask) if count is None else count)


def _token_count(mask: Tensor) -> Tensor:
    """(S, N, T) -> (S,): tokens in the loss per seed (at least 1, a denominator)."""
    return mask.sum((1, 2)).clamp(min=1)


def _k3(log_ratio: Tensor) -> Tensor:
    """k3 estimator of KL per token: exp(d) - d - 1 with d = log(pi_other / pi_theta) (Table 1's D_KL)."""
    return torch.expm1(log_ratio) - log_ratio


def _tied_fraction(rewards: Tensor, group_size: int) -> Tensor:
    """(S, N) rewards -> (S,): the share of groups whose rewards are all equal (zero advantage, Eq. 2)."""
    groups = rewards.view(rewards.shape[0], -1, group_size)
    return (groups == groups[..., :1]).all(-1).to(rewards.dtype).mean(-1)


def _masked_extreme(x: Tensor, padding: Tensor, largest: bool) -> Tensor:
    """(S, N, T) -> (S,): the largest or smallest value on the loss tokens (``padding``: mask == 0)."""
    fill = float("-inf") if largest else float("inf")
    x = x.masked_fill(padding, fill).flatten(1)
    return x.amax(1) if largest else x.amin(1)


def _loss_fields(out: Any) -> dict[str, Tensor]:
    """The loss and the objective's scalar diagnostics (clip fractions ...) of one loss output."""
    if callable(getattr(out, "scalars", None)):  # companion's LossOutput
        return dict(out.scalars())
    fields = {"loss": out.loss}
    for name, value in vars(out).items():
        if name != "loss" and isinstance(value, Tensor) and value.dim() == 0:
            fields[name] = value
    return fields


def _per_seed(fn: Callable[..., Any], *args: Tensor | None) -> Any:
    """Apply ``fn`` to each seed's slice of ``args`` (leading axis S): ``torch.func.vmap`` when ``fn`` allows
    it, else a plain loop over seeds (an objective with Python control flow on tensor values, or ``.item()``,
    cannot be vmapped). Both give each seed exactly its own result; the loop is slower for many seeds."""
    in_dims = tuple(None if a is None else 0 for a in args)
    try:
        return torch.func.vmap(fn, in_dims=in_dims)(*args)
    except (RuntimeError, ValueError):  # a genuine error in fn raises again in the loop below
        results = [fn(*(None if a is None else a[s] for a in args)) for s in range(args[0].shape[0])]
    if isinstance(results[0], dict):
        return {k: torch.stack([r[k] for r in results]) for k in results[0]}
    return torch.stack(results)


def seedwise_loss(objective: Any, logp: Tensor, old: Tensor, adv: Tensor, mask: Tensor, ref: Tensor | None,
                  tokens: Tensor | None = None, entropies: Tensor | None = None,
                  group_size: int | None = None) -> dict[str, Tensor]:
    """The objective applied to each seed's batch separately: (S, N, T) inputs -> {name: (S,)}.

    Each seed's loss sees only its own batch (token-sum denominators such as DAPO's never mix seeds), and
    the sum over seeds has, for each seed's parameters, exactly that seed's gradient. A companion
    ``Objective`` takes the seed axis as a batch axis (``batch_dims=1``: one call, inputs checked once) and
    gets the token ids, entropies and group size GTPO needs; any other objective runs per seed.
    """
    if isinstance(objective, Objective):
        if not objective.needs_tokens:
            tokens = entropies = None
        out = objective.loss(logp, old, adv, mask, ref_logprobs=ref, tokens=tokens, entropies=entropies,
                             group_size=group_size, batch_dims=1)
        return _loss_fields(out)

    def one(lp: Tensor, o: Tensor, a: Tensor, m: Tensor, r: Tensor | None) -> dict[str, Tensor]:
        return _loss_fields(objective.loss(lp, o, a, m, ref_logprobs=r))

    args = (logp, old, adv, mask, ref)
    if logp.shape[0] == 1:
        fields = one(*(None if a is None else a[0] for a in args))
        return {k: v.reshape(1) for k, v in fields.items()}
    return _per_seed(one, *args)


def seedwise_advantages(objective: Any, rewards: Tensor, group_size: int,
                        mask: Tensor | None = None) -> Tensor:
    """(S, N) rewards -> (S, N) advantages, each seed's groups on their own (Eq. 2). A companion
    ``Objective`` takes the seed axis as a batch axis (one call, every seed's rewards checked) and gets the
    mask (REINFORCE++ weighs completions by length); any other objective runs per seed."""
    if isinstance(objective, Objective):
        return objective.advantages(rewards, group_size, mask, batch_dims=1)

    def one(r: Tensor) -> Tensor:
        return objective.advantages(r, group_size=group_size)

    if rewards.shape[0] == 1:
        return one(rewards[0]).unsqueeze(0)
    return _per_seed(one, rewards)


# --- the loop ------------------------------------------------------------------------------------------
def _generators(seed: int, num_seeds: int, streams: str) -> Generators:
    """One generator per seed (``seed + s``), or one for all seeds."""
    if streams == "batched":
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + s) for s in range(num_seeds)]


def _sample_prompts(task: Task, generators: Generators, num_seeds: int, batch: int) -> Tensor:
    """(S, B) prompt indices, each seed's from its own generator, or all from one."""
    if isinstance(generators, torch.Generator):
        return task.sample_prompts(num_seeds * batch, generators).view(num_seeds, batch)
    return torch.stack([task.sample_prompts(batch, g) for g in generators])


def _prefix(policy: nn.Module, task: Task, prompt_idx: Tensor, generators: Generators) -> Tensor | None:
    """The template prefix per prompt, (S, B, k): forced = the template, shared = sampled once per group."""
    if task.prefix_len == 0 or task.template_mode == "sampled":
        return None
    if task.template_mode == "forced":
        return task.template_ids.to(prompt_idx.device).expand(*prompt_idx.shape, -1)
    k = task.prefix_len
    return policy.sample(task, prompt_idx, 1, generators, max_new_tokens=k, min_new_tokens=k)


def _prefix_probs(policy: nn.Module, task: Task, prompt_idx: Tensor, completions: Tensor,
                  logp: Tensor) -> Tensor:
    """(S, k): mean over the batch of pi(prefix token t | x, prefix_<t), for the prefix the mode uses."""
    k = task.prefix_len
    if task.template_mode == "shared":
        return logp[..., :k].detach().exp().mean(1)
    template = task.template_ids.to(completions.device)
    forced = torch.full_like(completions, task.eos_id)
    forced[..., :k] = template
    with torch.no_grad():
        lp, _ = policy.logprobs(task, prompt_idx, forced)
    return lp[..., :k].exp().mean(1)


def _optimizer_columns(optimizer: torch.optim.Optimizer, first_row: int, rows: int) -> dict[str, np.ndarray]:
    """The optimizer's own per-step record (``InstrumentedAdamW.history``), one row per inner step, as
    ``opt_<key>`` columns; totals only (per-group columns stay in ``optimizer.history``)."""
    history = getattr(optimizer, "history", None)
    if history is None or not hasattr(history, "keys"):
        return {}
    columns = {}
    for key in history.keys():  # noqa: SIM118 (optim's History has keys(), no __iter__)
        values = np.asarray(history[key])[first_row:]
        if "/" not in key and len(values) == rows:
            columns[f"opt_{key}"] = values
    return columns


def train(policy: nn.Module, task: Task, objective: Any, *, optimizer: OptimizerSpec = None, lr: float = 1e-2,
          steps: int = 50, group_size: int = 8, prompts_per_step: int = 4, inner_steps: int = 1,
          seed: int = 0, sampling: Sampling = "on_policy", device: str | torch.device | None = None,
          progress: bool | None = None, streams: Streams = "per_seed", kl_ref: bool = True,
          after_step: bool = False, target_kl: float | None = None,
          on_step: StepHook | None = None) -> History:
    """Train ``policy`` on ``task`` with ``objective`` for ``steps`` outer steps; return the History.

    optimizer: a torch optimizer over ``policy.parameters()``, a callable ``params -> optimizer`` (e.g.
        ``lambda p: cp.InstrumentedAdamW(p, lr=1e-2)``), or None for AdamW with ``lr`` and torch's
        defaults (``InstrumentedAdamW(diagnostics="off")``: ``torch.optim.AdamW``'s numbers bit for bit,
        faster on the CPU). ``lambda p: torch.optim.AdamW(p, lr=lr, fused=True)`` is faster still on the
        CPU but rounds differently: an explicit choice, not the default.
    group_size: G >= 2 completions per prompt; prompts_per_step: B prompts per outer step.
    inner_steps: mu optimizer steps on each fixed batch (pi_old is the policy at the start of the batch).
    seed: seed of the first run; seed index s of a multi-seed policy uses ``seed + s``.
    sampling: ``"on_policy"`` (current policy, shared random numbers) or ``"fixed"`` (frozen initial policy).
    device: None picks CUDA when present, else CPU (with ``COMPANION_THREADS`` threads, default 1).
    progress: a progress line (``cp.notebook.Progress``); None shows one when the run looks longer than a
        few seconds, outside pytest.
    streams: ``"per_seed"`` (seed s's random numbers from its own generator, ``seed + s``: its records equal a
        single-seed run's) or ``"batched"`` (all seeds from one generator: faster, S-dependent).
    kl_ref: record ``kl_ref``, the KL to pi_ref (the policy at the start). False skips pi_ref's forward pass
        and the column, unless the objective uses pi_ref (a companion Objective with beta > 0; a custom
        objective then gets ``ref_logprobs=None``), and the frozen copy unless ``sampling="fixed"``.
    after_step: also record how far each update took the policy from pi_old (one more forward pass):
        ``kl_old_after``, ``ratio_dev_after``, ``past_clip_after``, ``clipped_drift_after``,
        ``clipped_motion_after`` (see :func:`trust_region_columns`).
    target_kl: stop the inner loop of a seed once its KL(pi_old || pi_theta) estimate exceeds this (see
        :func:`_step_unless_stopped`); the ``stopped`` column says which steps were skipped.
    on_step: called after every inner step (after the optimizer step) with the outer step, the inner
        step and the outer step's fixed ``Batch`` (prompts, completions, mask, rewards, advantages, pi_old
        and pi_ref log-probs): to keep real batches for exact checks, or to evaluate the policy between
        steps. The records summarise a batch; this hook hands over the batch itself.
    """
    _check_arguments(task, steps, group_size, prompts_per_step, inner_steps, sampling, streams)
    _check_trust_region(policy, target_kl)
    dev = resolve_device(device)
    with cpu_threads(dev):
        policy.to(dev)
        reference_logprobs = kl_ref or _uses_reference(objective)
        reference = copy.deepcopy(policy).requires_grad_(False) \
            if reference_logprobs or sampling == "fixed" else None
        opt = _build_optimizer(optimizer, [p for p in policy.parameters() if p.requires_grad], lr)
        generators = _generators(seed, policy.num_seeds, streams)
        first_opt_row = len(getattr(opt, "history", ()))
        records: dict[str, list[Tensor]] = {}
        line, started = None, time.perf_counter()
        for k in range(steps):
            if callable(getattr(opt, "new_batch", None)):
                opt.new_batch()  # InstrumentedAdamW's hook (counts batches, optionally resets moments)
            batch = _rollout(policy, reference, task, objective, generators, prompts_per_step, group_size,
                             sampling, dev, reference_logprobs)
            for i in range(inner_steps):
                for name, value in _inner_step(policy, task, objective, opt, batch, after_step,
                                               target_kl).items():
                    records.setdefault(name, []).append(value)
                if on_step is not None:
                    on_step(k, i, batch)
            line = _advance_progress(line, progress, k + 1, steps, started)
        if line is not None:
            line.close()
    config = dict(task=task.name, objective=getattr(objective, "name", type(objective).__name__),
                  steps=steps, group_size=group_size, prompts_per_step=prompts_per_step,
                  inner_steps=inner_steps, seed=seed, sampling=sampling, device=str(dev), streams=streams,
                  target_kl=target_kl)
    columns = _stack(records)
    columns["outer_step"] = np.repeat(np.arange(steps), inner_steps)
    columns["inner_step"] = np.tile(np.arange(inner_steps), steps)
    columns.update(_optimizer_columns(opt, first_opt_row, steps * inner_steps))
    return History(columns, policy.num_seeds, config)


@dataclass
class Batch:
    """One outer step's fixed data, every tensor with a leading seed axis."""

    prompt_idx: Tensor  # (S, N) prompt of each completion
    completions: Tensor  # (S, N, T)
    mask: Tensor  # (S, N, T) tokens in the loss
    rewards: Tensor  # (S, N)
    correct: Tensor  # (S, N)
    advantages: Tensor  # (S, N)
    ref_logprobs: Tensor | None  # (S, N, T), or None when nothing uses pi_ref
    group_size: int
    old_logprobs: Tensor | None = None  # (S, N, T), set by the first inner step
    stopped: Tensor | None = None  # (S,) bool: seeds whose inner loop stopped (target_kl)
    padding: Tensor = field(init=False)  # (S, N, T) mask == 0
    token_count: Tensor = field(init=False)  # (S,) tokens in the loss (at least 1)
    records: dict[str, Tensor] = field(init=False)  # the columns that depend on the batch alone

    def __post_init__(self) -> None:
        self.padding = self.mask == 0
        self.token_count = _token_count(self.mask)
        self.records = {"reward": self.rewards.mean(1), "accuracy": self.correct.mean(1),
                        "length": self.mask.sum(2).mean(1),
                        "tied_fraction": _tied_fraction(self.rewards, self.group_size)}


def _uses_reference(objective: Any) -> bool:
    """Whether the loss reads pi_ref: a companion Objective with a KL term (any other objective: unknown)."""
    return isinstance(objective, Objective) and objective.beta > 0 and objective.kl is not None


@torch.no_grad()
def _rollout(policy: nn.Module, reference: nn.Module | None, task: Task, objective: Any,
             generators: Generators, prompts_per_step: int, group_size: int, sampling: str,
             device: torch.device, reference_logprobs: bool = True) -> Batch:
    """Sample B prompts x G completions, score them, and compute pi_ref log-probs when asked (pi_old comes
    from the first inner step's forward pass, where theta = theta_old)."""
    sampler = policy if sampling == "on_policy" else reference
    prompts = _sample_prompts(task, generators, policy.num_seeds, prompts_per_step).to(device)
    prefix = _prefix(sampler, task, prompts, generators)
    completions = sampler.sample(task, prompts, group_size, generators, prefix=prefix)
    prompt_idx = prompts.repeat_interleave(group_size, dim=1)
    ref = reference.logprobs(task, prompt_idx, completions)[0] if reference_logprobs else None
    dtype = next(policy.parameters()).dtype if ref is None else ref.dtype
    rewards = task.reward(prompt_idx, completions).to(dtype)
    mask = task.completion_mask(completions).to(dtype)
    return Batch(prompt_idx=prompt_idx, completions=completions, mask=mask, rewards=rewards,
                 correct=task.is_correct(prompt_idx, completions).to(dtype),
                 advantages=seedwise_advantages(objective, rewards, group_size, mask), ref_logprobs=ref,
                 group_size=group_size)


def _inner_step(policy: nn.Module, task: Task, objective: Any, opt: torch.optim.Optimizer,
                b: Batch, after_step: bool = False, target_kl: float | None = None) -> dict[str, Tensor]:
    """One optimizer step on the fixed batch; returns the record (statistics before the update, and after it
    with ``after_step``)."""
    logp, entropy = policy.logprobs(task, b.prompt_idx, b.completions)
    if b.old_logprobs is None:  # pi_old is theta at the first inner step: reuse that forward pass
        b.old_logprobs = logp.detach()
    fields = seedwise_loss(objective, logp, b.old_logprobs, b.advantages, b.mask, b.ref_logprobs,
                           tokens=b.completions, entropies=entropy, group_size=b.group_size)
    if task.prefix_len > 0:
        fields["prefix_prob"] = _prefix_probs(policy, task, b.prompt_idx, b.completions, logp)
    opt.zero_grad(set_to_none=True)
    fields["loss"].sum().backward()
    lp = logp.detach()
    if target_kl is None:
        opt.step()
    else:
        fields["stopped"] = _step_unless_stopped(policy, opt, b, lp, target_kl)
    check_finite_parameters(policy, opt)
    if after_step:
        fields.update(_after_step_columns(policy, task, objective, b, lp, entropy.detach()))
    fields = {name: value.detach() if value.requires_grad else value for name, value in fields.items()}
    ratio = (lp - b.old_logprobs).exp()
    row = {**b.records, "entropy": _masked_mean(entropy, b.mask, b.token_count),
           "kl_old": _masked_mean(_k3(b.old_logprobs - lp), b.mask, b.token_count)}
    if b.ref_logprobs is not None:
        row["kl_ref"] = _masked_mean(_k3(b.ref_logprobs - lp), b.mask, b.token_count)
    row["ratio_min"] = _masked_extreme(ratio, b.padding, largest=False)
    row["ratio_max"] = _masked_extreme(ratio, b.padding, largest=True)
    return {**row, **fields}


def _stack(records: dict[str, list[Tensor]]) -> dict[str, np.ndarray]:
    """Lists of per-step tensors -> numpy columns; a length-1 seed axis (one seed, or a global value such as
    the step counters and the optimizer's diagnostics) is dropped."""
    columns = {}
    for name, values in records.items():
        array = torch.stack(values).cpu().numpy()
        columns[name] = array[:, 0] if array.shape[1] == 1 else array
    return columns


def _advance_progress(line: Progress | None, progress: bool | None, done: int, total: int,
                      started: float) -> Progress | None:
    """Open a progress line when asked, or (auto) when the run looks longer than a few seconds outside
    pytest; it counts from the start of the run."""
    if line is not None:
        line.update()
        return line
    if progress is False or done == total:
        return None
    elapsed = time.perf_counter() - started
    if progress or (not under_pytest() and elapsed / done * total > PROGRESS_AFTER_SECONDS):
        line = Progress(total, "train", started=started)
        line.update(done)
        return line
    return None


# --- non-finite parameters right after the optimizer step ----------------------------------------------
def check_finite_parameters(policy: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``FloatingPointError`` when the optimizer step just taken left NaN or inf in a parameter.

    One sum per parameter and one device sync when all is well (``objective._finite_by_sum``); the
    entry-by-entry look only when the total is not finite. Otherwise the message names the parameters, says
    whether the gradients going in were already non-finite (then the loss or the rewards are to blame, not
    the step), and, for an Adam-type optimizer with ``eps == 0``, explains the 0/0.
    """
    params = [p.detach() for p in policy.parameters() if p.requires_grad]
    if not params or _finite_by_sum(params):
        return
    if all(bool(p.isfinite().all()) for p in params):
        return
    raise FloatingPointError(_nonfinite_step_message(policy, optimizer))


def _nonfinite_step_message(policy: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    bad, bad_grads = [], []
    for name, p in policy.named_parameters():
        if not p.requires_grad:
            continue
        if not bool(p.isfinite().all()):
            nan, inf = int(p.isnan().sum()), int(p.isinf().sum())
            bad.append(f"{name!r} has {nan:,} NaN and {inf:,} inf of {p.numel():,} entries")
        if p.grad is not None and not bool(p.grad.isfinite().all()):
            bad_grads.append(repr(name))
    message = f"the optimizer step produced non-finite parameters: {'; '.join(bad)}."
    if bad_grads:
        return (f"{message} The gradients going in were already non-finite ({', '.join(bad_grads)}): look at "
                "the loss and the rewards, not at the optimizer.")
    eps_values = [group.get("eps") for group in optimizer.param_groups]
    optimizer_name = type(optimizer).__name__
    if any(isinstance(eps, int | float) and eps == 0 for eps in eps_values):
        return (f"{message} The gradients going in were finite. {optimizer_name} has eps=0: Adam "
                "divides m_hat by sqrt(v_hat) + eps, which is 0/0 = NaN on every coordinate whose gradient "
                "and second moment are exactly 0 (a tabular node that no sampled completion reached, a token "
                "that no completion used, a group whose rewards are all equal), and inf where a tiny "
                "gradient's square underflows to 0. Use a positive eps far below every sqrt(v_hat) instead, "
                "e.g. eps=torch.finfo(torch.float32).tiny (1.2e-38, the smallest normal float32): it leaves "
                "every step whose sqrt(v_hat) exceeds about 1e-30 exactly as eps=0 would take it, and keeps "
                "power-of-two reward scaling bit-exact.")
    return (f"{message} The gradients going in were finite, so the update itself overflowed (or divided by "
            f"nearly 0): lower the learning rate of {optimizer_name}, or check its eps ({eps_values}).")


# --- the trust region after each step, and a target-KL early stop (chapter 5) ---------------------------
def kl_old_estimate(logp: Tensor, old: Tensor, mask: Tensor) -> Tensor:
    """(S, N, T) -> (S,): KL(pi_old || pi_theta) on the batch, the mean over loss tokens of s - 1 - log s with
    s = pi_theta / pi_old (k3 with the ratio this way round: >= 0 per token, and unbiased when the batch was
    sampled from pi_old, i.e. on-policy, because E_old[s] = 1)."""
    log_s = logp - old
    return _masked_mean(torch.expm1(log_s) - log_s, mask)


def trust_region_columns(before: Tensor, after: Tensor, old: Tensor, mask: Tensor, advantages: Tensor,
                         clipped_before: Tensor | None, clipped_after: Tensor | None) -> dict[str, Tensor]:
    """How far one optimizer step took pi_theta from pi_old on the batch, per seed (S,), from the log-probs
    before and after the step, (S, N, T), the advantages (S, N), and the tokens in the clipped region before
    and after the step (the objective's ``out.clipped``: Eq. 28's region, where the advantage gradient is 0):

    - ``kl_old_after``: :func:`kl_old_estimate` after the step;
    - ``ratio_dev_after``: the largest |s - 1| over loss tokens after the step;
    - ``past_clip_after``: the share of the loss tokens with A != 0 (those the clip can act on) that are in
      the clipped region after the step (0 when every advantage is 0);
    - ``clipped_drift_after``: how far the step moved the tokens that were already in the clipped region
      further from s = 1, mean over those tokens of sign(log s) * (change of log s); 0 when there were none.
      Their own gradient is 0, so this is motion caused by momentum or by other tokens' gradients (Prop. 3);
    - ``clipped_motion_after``: the same tokens' mean |change of log s|, in either direction.

    The last three are NaN without ``clipped_*`` (an objective that is not a companion Objective).
    """
    log_s = before - old
    nan = torch.full_like(log_s[:, 0, 0], float("nan"))
    columns = {"kl_old_after": kl_old_estimate(after, old, mask),
               "ratio_dev_after": _masked_extreme(torch.expm1(after - old).abs(), mask == 0, largest=True),
               "past_clip_after": nan, "clipped_drift_after": nan, "clipped_motion_after": nan}
    if clipped_before is not None and clipped_after is not None:
        moved, was_clipped = after - before, clipped_before.to(mask.dtype) * mask
        informative = mask * (advantages != 0).unsqueeze(-1).to(mask.dtype)
        columns["past_clip_after"] = _masked_mean(clipped_after.to(mask.dtype), informative)
        columns["clipped_drift_after"] = _masked_mean(torch.sign(log_s) * moved, was_clipped)
        columns["clipped_motion_after"] = _masked_mean(moved.abs(), was_clipped)
    return columns


def clipped_tokens(objective: Any, logp: Tensor, b: Batch, entropy: Tensor) -> Tensor | None:
    """(S, N, T) bool: ``out.clipped`` of a companion Objective at these log-probs, None for other objectives.

    The clip decision of a token depends on its own ratio (or its completion's) and advantage only, so the
    seeds are evaluated as one flattened batch (the loss value itself is not used).
    """
    if not isinstance(objective, Objective):
        return None

    def flat(x: Tensor) -> Tensor:
        return x.flatten(0, 1)

    out = objective.loss(flat(logp), flat(b.old_logprobs), flat(b.advantages), flat(b.mask),
                         ref_logprobs=None if b.ref_logprobs is None else flat(b.ref_logprobs),
                         tokens=flat(b.completions),
                         entropies=flat(entropy), group_size=b.group_size, validate=False)
    return out.clipped.view(logp.shape)


@torch.no_grad()
def _after_step_columns(policy: nn.Module, task: Task, objective: Any, b: Batch, before: Tensor,
                        entropy_before: Tensor) -> dict[str, Tensor]:
    """:func:`trust_region_columns` of the step just taken (one more forward pass)."""
    after, entropy = policy.logprobs(task, b.prompt_idx, b.completions)
    return trust_region_columns(before, after, b.old_logprobs, b.mask, b.advantages,
                                clipped_tokens(objective, before, b, entropy_before),
                                clipped_tokens(objective, after, b, entropy))


def _check_trust_region(policy: nn.Module, target_kl: float | None) -> None:
    if target_kl is None:
        return
    if not target_kl > 0:
        raise ValueError(f"target_kl must be > 0 (or None: no early stop), got {target_kl}")
    seeds = policy.num_seeds
    for name, p in policy.named_parameters():
        if seeds > 1 and p.requires_grad and (p.dim() == 0 or p.shape[0] != seeds):
            raise ValueError(f"target_kl stops seeds one at a time, so every parameter needs a leading seed "
                             f"axis of {seeds}; {name} has shape {tuple(p.shape)}")


@torch.no_grad()
def _step_unless_stopped(policy: nn.Module, opt: torch.optim.Optimizer, b: Batch, logp: Tensor,
                         target_kl: float) -> Tensor:
    """Target-KL early stop: a seed whose :func:`kl_old_estimate`, measured before this step, exceeds
    ``target_kl`` takes no more steps on this batch. Returns (S,) 1.0 where the step was skipped.

    The optimizer steps as usual, then the parameters and the optimizer state (every state tensor shaped like
    its parameter: Adam's m and v) of the stopped seeds are put back, so that neither their gradient nor their
    momentum moves them. The seeds of one tensor share Adam's step counter: it keeps counting for a stopped
    seed unless every seed has stopped (then it is put back too, and the step is undone exactly). An
    instrumented optimizer still records the step as taken.
    """
    over = kl_old_estimate(logp, b.old_logprobs, b.mask) > target_kl
    b.stopped = over if b.stopped is None else b.stopped | over
    if not b.stopped.any():
        opt.step()
        return b.stopped.to(logp.dtype)
    every = bool(b.stopped.all())
    params = [p for group in opt.param_groups for p in group["params"]]
    rows = b.stopped.to(params[0].device) if policy.num_seeds > 1 else ...
    saved = []
    for p in params:
        for tensor in _seed_shaped(opt, p, every):
            index = rows if tensor.shape == p.shape else ...
            saved.append((tensor, index, tensor[index].clone()))
    opt.step()
    for tensor, index, kept in saved:
        tensor[index] = kept
    return b.stopped.to(logp.dtype)


def _seed_shaped(opt: torch.optim.Optimizer, p: Tensor, every: bool) -> list[Tensor]:
    """``p`` and its optimizer state tensors shaped like it; with ``every``, the other state tensors too."""
    state = [v for v in opt.state.get(p, {}).values() if torch.is_tensor(v)]
    return [p, *(v for v in state if v.shape == p.shape or every)]
