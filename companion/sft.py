"""A pretrained start: supervised fine-tuning on demonstrations, before any RL (R1-Zero's base model).

R1-Zero starts RL from a model that already has opinions: it writes a format, reasons for a while and
answers, right or wrong. Here that model is made in seconds: teacher-forced maximum likelihood on
demonstrations of a task with a marker (``cp.make_task("think")``), stopped early so that the accuracy is
modest. Each demonstration is the template, ``n`` reasoning tokens (``n`` uniform in ``reasoning``), the
marker and the right answer, then EOS. Two styles of reasoning:

* ``"draft"``: the first reasoning token is the answer, the rest are '~': ``#3~~=3.`` The model commits to
  an answer before it reasons, so how long it goes on can depend on what it committed to.
* ``"answer_last"``: only '~': ``#~~~=3.`` Nothing before the marker tells a right answer from a wrong one.

Nothing is cached: the same call with the same seed gives the same model on the same device::

    import companion as cp
    task = cp.make_task("think", template="#", template_mode="sampled")
    policy = cp.StackedGPT2Policy.for_task(task, num_seeds=8)
    record = cp.sft.train(policy, task, steps=120, style="draft")   # record.loss: (120, 8)
    cp.sft.evaluate(policy, task).accuracy                          # (8,) per seed
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from companion.lab import cpu_threads, resolve_device
from companion.notebook import Progress
from companion.tasks import REASONING_TOKEN, Task

Style = Literal["draft", "answer_last"]
STYLES = ("draft", "answer_last")


@dataclass(frozen=True)
class Demos:
    """What the demonstrations look like: the reasoning ``style`` ("draft" or "answer_last") and the number
    of reasoning tokens (between the template and the marker), uniform in ``reasoning = (lo, hi)``; the draft
    style needs ``lo`` >= the answer's length (its first reasoning tokens are the answer)."""

    style: Style = "draft"
    reasoning: tuple[int, int] = (1, 4)

    def check(self, task: Task) -> None:
        if not isinstance(task, Task) or not task.marker:
            raise ValueError("task: demonstrations need a task whose answer follows a marker, e.g. "
                             "cp.make_task('think')")
        if REASONING_TOKEN not in task.vocab:
            raise ValueError(f"task: the vocab {task.vocab} has no reasoning token {REASONING_TOKEN!r}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        room = task.max_new_tokens - task.shortest_length
        least = task.answers.shape[1] if self.style == "draft" else 0
        lo, hi = self.reasoning
        if not least <= lo <= hi <= room:
            raise ValueError(f"reasoning=(lo, hi) must satisfy {least} <= lo <= hi <= {room} (the room that "
                             f"max_new_tokens={task.max_new_tokens} leaves for the {self.style} style), got "
                             f"{self.reasoning}")

    def sample(self, task: Task, prompt_idx: Tensor, generator: torch.Generator) -> Tensor:
        """``prompt_idx`` (...,) -> demonstrations (..., T): template, reasoning, marker, answer, EOS."""
        self.check(task)
        flat = prompt_idx.reshape(-1).cpu()
        M, T, k = flat.numel(), task.max_new_tokens, task.prefix_len
        answers = task.answers[flat]  # (M, a)
        a = answers.shape[1]
        lo, hi = self.reasoning
        n = torch.randint(lo, hi + 1, (M,), generator=generator)
        out = torch.full((M, T), task.eos_id, dtype=torch.long)
        out[:, :k] = task.template_ids
        position = torch.arange(T)
        out[(position >= k) & (position < k + n.unsqueeze(1))] = task.vocab.index(REASONING_TOKEN)
        if self.style == "draft":
            out[:, k:k + a] = answers
        rows, marker_at = torch.arange(M).unsqueeze(1), (k + n).unsqueeze(1)
        out[rows, marker_at] = task.vocab.index(task.marker)
        out[rows, marker_at + 1 + torch.arange(a)] = answers
        return out.view(*prompt_idx.shape, T).to(prompt_idx.device)


@dataclass
class Record:
    """What supervised training logged: ``loss`` (steps, S), the mean negative log-likelihood per token."""

    loss: np.ndarray
    seconds: float


def train(policy: nn.Module, task: Task, demos: Demos | None = None, *, steps: int = 100,
          batch_size: int = 64, lr: float = 1e-2, seed: int = 0,
          optimizer: torch.optim.Optimizer | None = None, device: str | torch.device | None = None,
          progress: bool | None = None) -> Record:
    """Teacher-forced maximum likelihood on ``demos`` (default ``Demos()``), ``steps`` optimizer steps of
    ``batch_size`` demonstrations per seed (seed index s draws from ``seed + s``, as the lab does).
    ``optimizer``: one over the policy's parameters, to continue a training (its moments kept); None builds
    a fresh ``torch.optim.AdamW`` at ``lr`` without weight decay.

    Every seed's loss is the mean over its own tokens (EOS included), and the seeds' losses are summed, so
    each seed's parameters get exactly their own gradient. Returns the :class:`Record`.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    demos = Demos() if demos is None else demos
    demos.check(task)
    dev = resolve_device(device)
    seeds = policy.num_seeds
    generators = [torch.Generator().manual_seed(seed + s) for s in range(seeds)]
    started, line, losses = time.perf_counter(), None, []
    with cpu_threads(dev):
        policy.to(dev)
        opt = optimizer or torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr,
                                             weight_decay=0.0)
        for step in range(steps):
            prompts = torch.stack([task.sample_prompts(batch_size, g) for g in generators])
            completions = torch.stack([demos.sample(task, prompts[s], g)
                                       for s, g in enumerate(generators)]).to(dev)
            logp, _ = policy.logprobs(task, prompts.to(dev), completions)
            mask = task.completion_mask(completions).to(logp.dtype)
            nll = -(logp * mask).sum((1, 2)) / mask.sum((1, 2))  # (S,)
            opt.zero_grad(set_to_none=True)
            nll.sum().backward()
            opt.step()
            losses.append(nll.detach().cpu())
            line = _progress(line, progress, step + 1, steps, started)
    if line is not None:
        line.close()
    return Record(torch.stack(losses).numpy(), time.perf_counter() - started)


def _progress(line: Progress | None, progress: bool | None, done: int, total: int,
              started: float) -> Progress | None:
    """A progress line when asked, or (None) when the run looks longer than a few seconds."""
    from companion.lab import _advance_progress

    return _advance_progress(line, progress, done, total, started)


@dataclass
class Evaluation:
    """Sampled behaviour of a policy on every prompt, per seed (S,): ``accuracy``, ``format`` (completions
    that start with the template and contain the marker), ``length`` (mean tokens, EOS included)."""

    accuracy: np.ndarray
    format: np.ndarray
    length: np.ndarray


@torch.no_grad()
def evaluate(policy: nn.Module, task: Task, *, samples_per_prompt: int = 8, seed: int = 10_000) -> Evaluation:
    """Sample ``samples_per_prompt`` completions for every prompt of ``task`` (seed index s from
    ``seed + s``) and score them."""
    seeds = policy.num_seeds
    device = next(policy.parameters()).device
    generators = [torch.Generator().manual_seed(seed + s) for s in range(seeds)]
    prompts = torch.arange(task.num_prompts, device=device).expand(seeds, -1)
    completions = policy.sample(task, prompts, samples_per_prompt, generators)
    prompt_idx = prompts.repeat_interleave(samples_per_prompt, dim=1)
    correct = task.is_correct(prompt_idx, completions).float()
    k = task.prefix_len
    marker = (completions[..., k:] == task.vocab.index(task.marker)) & (task.completion_mask(
        completions[..., k:]) > 0)
    formatted = marker.any(-1) & (completions[..., :k] == task.template_ids.to(device)).all(-1)
    length = task.completion_mask(completions).sum(-1)
    return Evaluation(correct.mean(1).cpu().numpy(), formatted.float().mean(1).cpu().numpy(),
                      length.float().mean(1).cpu().numpy())
