"""A tiny R1-Zero (chapter 8): a pretrained GPT-2, four RL recipes on the same seeds, and what they log.

The pieces of the book in one run. ``make_task()`` is the "think" task with a sampled format token: a
completion must start with '#', reason, write '=' and the sum. ``pretrain`` makes the start R1-Zero has: a
model that already answers, right or wrong (supervised fine-tuning on demonstrations, ``companion.sft``,
until a modest accuracy). ``recipes(scale)`` are four ways to run RL from there: GRPO as DeepSeek-R1 uses it,
Dr GRPO, DAPO, and the book's takeaways. ``run`` trains one recipe on every seed at once and keeps what
chapters 3–6 need to locate their bias: the lab's History (with ``after_step`` columns and
``InstrumentedAdamW``'s diagnostics), the batches, the optimizer, and the mean length of the correct and
of the incorrect completions of every batch (the figure of Liu et al.'s Dr GRPO paper)::

    import companion as cp
    scale = cp.r1zero.Scale.pick()                     # the GPU setting when CUDA is there, else the CPU one
    task = cp.r1zero.make_task()
    start = cp.r1zero.pretrain(scale, task)
    runs = {name: cp.r1zero.run(recipe, start.policy, task, scale)
            for name, recipe in cp.r1zero.recipes(scale).items()}
    cp.viz.dashboard({name: r.history for name, r in runs.items()})

Everything is regenerated from seeds; nothing is cached.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from companion import sft
from companion.gpt2 import StackedGPT2Policy
from companion.lab import Batch, History, resolve_device, train
from companion.notebook import Progress
from companion.objective import Objective
from companion.optim import InstrumentedAdamW
from companion.tasks import Task
from companion.tasks import make_task as _make_task


@dataclass(frozen=True)
class Scale:
    """Everything that sets the size of the experiment, in one place.

    Model: ``n_layer`` x ``n_embd`` GPT-2 with ``n_head`` heads, ``seeds`` of them in one tensor program.
    RL: ``steps`` outer steps of ``prompts_per_step`` prompts x ``group_size`` completions, ``inner_steps``
    (mu) optimizer steps per batch for the literature's recipes, learning rate ``lr``. Pretraining: AdamW at
    ``sft_lr`` on batches of ``sft_batch`` demonstrations, in rounds of ``sft_round`` steps, until the mean
    sampled accuracy over seeds reaches ``target_accuracy`` (at most ``sft_max_steps`` steps).
    """

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    seeds: int
    group_size: int
    prompts_per_step: int
    steps: int
    inner_steps: int
    lr: float
    sft_lr: float = 1e-2
    sft_batch: int = 64
    sft_round: int = 30
    sft_max_steps: int = 300
    target_accuracy: float = 0.4

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "seeds", "prompts_per_step", "steps", "inner_steps",
                     "sft_batch", "sft_round", "sft_max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Scale.{name} must be an int >= 1, got {value!r}")
        if self.group_size < 2:
            raise ValueError(f"Scale.group_size must be >= 2 (group-relative advantages), got "
                             f"{self.group_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"Scale.n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if not 0.0 < self.target_accuracy < 1.0:
            raise ValueError(f"Scale.target_accuracy must lie in (0, 1), got {self.target_accuracy}")

    @classmethod
    def cpu(cls) -> Scale:
        """The chapter's default: seconds on one CPU thread."""
        return cls("CPU", n_layer=1, n_embd=32, n_head=2, seeds=8, group_size=8, prompts_per_step=4,
                   steps=40, inner_steps=2, lr=1e-3)

    @classmethod
    def gpu(cls) -> Scale:
        """With a GPU: a wider, deeper model, larger groups and batches, more seeds, ten times the steps,
        and mu = 4 (verl's default number of optimizer steps per batch)."""
        return cls("GPU", n_layer=2, n_embd=64, n_head=4, seeds=16, group_size=16, prompts_per_step=8,
                   steps=400, inner_steps=4, lr=2e-3, sft_lr=5e-3, sft_round=15)

    @classmethod
    def pick(cls, cuda: bool | None = None) -> Scale:
        """``gpu()`` when CUDA is available (or ``cuda=True``), else ``cpu()``."""
        return cls.gpu() if (torch.cuda.is_available() if cuda is None else cuda) else cls.cpu()

    def shrunk(self, steps: int = 2, seeds: int = 2) -> Scale:
        """The same setting with few steps and seeds (tests run the GPU setting this way on a CPU)."""
        return dataclasses.replace(self, steps=steps, seeds=seeds, sft_round=2, sft_max_steps=2,
                                   name=f"{self.name}, shrunk")


def make_task() -> Task:
    """The "think" task: 'a+b' (a, b < 5); a completion starts with the format token '#' (sampled: a
    completion without it earns nothing), reasons, then writes '=' and the sum; at most 8 tokens."""
    return _make_task("think", template="#", template_mode="sampled")


PRETRAINING = sft.Demos(style="draft", reasoning=(1, 4))
"""The demonstrations of the pretrained start: '#', the answer as a draft, 0-3 '~', '=', the answer."""


@dataclass
class Start:
    """The pretrained start: the policy (all seeds), the supervised loss per step, the mean sampled
    accuracy after each round of ``scale.sft_round`` steps, and the final evaluation."""

    policy: StackedGPT2Policy
    loss: np.ndarray  # (steps, S)
    accuracy_by_round: list[float]
    evaluation: sft.Evaluation

    @property
    def steps(self) -> int:
        return len(self.loss)


def pretrain(scale: Scale, task: Task, *, seed: int = 0, device: str | torch.device | None = None,
             progress: bool = False) -> Start:
    """``scale.seeds`` GPT-2s (seed index s from ``seed + s``), trained on ``PRETRAINING`` demonstrations in
    rounds of ``scale.sft_round`` steps until their mean sampled accuracy reaches ``scale.target_accuracy``
    (at most ``scale.sft_max_steps`` steps). ``progress``: a progress line over the steps."""
    policy = StackedGPT2Policy.for_task(task, num_seeds=scale.seeds, n_layer=scale.n_layer,
                                        n_embd=scale.n_embd, n_head=scale.n_head, seed=seed)
    policy.to(resolve_device(device))
    line = Progress(scale.sft_max_steps, "pretraining") if progress else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=scale.sft_lr, weight_decay=0.0)  # for every round
    losses, accuracy, done = [], [], 0
    while done < scale.sft_max_steps:
        steps = min(scale.sft_round, scale.sft_max_steps - done)
        record = sft.train(policy, task, PRETRAINING, steps=steps, batch_size=scale.sft_batch,
                           seed=seed + 1000 * (len(losses) + 1), optimizer=optimizer, device=device,
                           progress=False)
        losses.append(record.loss)
        done += steps
        accuracy.append(float(sft.evaluate(policy, task).accuracy.mean()))
        if line is not None:
            line.update(steps)
        if accuracy[-1] >= scale.target_accuracy:
            break
    if line is not None:
        line.close()
    return Start(policy, np.concatenate(losses), accuracy, sft.evaluate(policy, task))


# --- the four recipes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """One RL configuration: the objective (Eq. 1), mu, and AdamW's settings (always InstrumentedAdamW with
    ``diagnostics="full"``, so that every run logs the same columns)."""

    name: str
    objective: Objective
    inner_steps: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    why: str = ""

    def optimizer(self) -> Callable[[list[torch.nn.Parameter]], InstrumentedAdamW]:
        return lambda params: InstrumentedAdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                                weight_decay=self.weight_decay, diagnostics="full")


def recipes(scale: Scale) -> dict[str, Recipe]:
    """GRPO (R1), Dr GRPO and DAPO as their presets (``scale.inner_steps`` steps per batch), and the book's
    takeaways: one weight per token (ch. 3), no σ and β = 0 so that the reward scale only meets ε, which is
    logged (ch. 4), one optimizer step per batch (ch. 5), and the dashboard instead of the loss (ch. 6)."""
    mu, lr = scale.inner_steps, scale.lr
    return {
        "GRPO": Recipe("GRPO", Objective.preset("grpo_r1"), mu, lr,
                       why="DeepSeek-R1's GRPO: α = 1/(G|o_i|σ), clip 0.2, k3 KL with β = 0.04"),
        "Dr GRPO": Recipe("Dr GRPO", Objective.preset("dr_grpo"), mu, lr,
                          why="α = 1/G: no length and no σ normalisation; clip 0.2, β = 0.04"),
        "DAPO": Recipe("DAPO", Objective.preset("dapo"), mu, lr,
                       why="α = 1/(σ Σ|o_j|), clip-higher 0.2/0.28, no KL"),
        "takeaways": Recipe("takeaways", Objective.preset("dr_grpo", beta=0.0, kl=None).with_(
            name="takeaways"), 1, lr, why="α = 1/G (ch. 3), no σ and β = 0 (ch. 4), μ = 1 (ch. 5)"),
    }


# --- one run -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One recipe trained from the pretrained start on every seed.

    ``policy``: the trained copy; ``history``: the lab's records (``after_step`` columns included);
    ``batches``: the batch of every outer step (its π_old log-probs set); ``optimizer``: the
    InstrumentedAdamW at the end (its √v̂ for ``cp.theory``); ``length_correct`` / ``length_incorrect``:
    (steps, S) mean |o_i| of the correct and of the incorrect completions of each batch, NaN where a seed's
    batch had none.
    """

    recipe: Recipe
    policy: StackedGPT2Policy
    history: History
    batches: list[Batch]
    optimizer: InstrumentedAdamW
    length_correct: np.ndarray
    length_incorrect: np.ndarray


def lengths_by_correctness(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(S,) mean |o_i| (EOS included) of the correct and of the incorrect completions of each seed's batch;
    NaN where there is none."""
    lengths, correct = batch.mask.sum(-1), batch.correct
    nan = torch.tensor(float("nan"), dtype=lengths.dtype, device=lengths.device)

    def mean_over(weight: torch.Tensor) -> torch.Tensor:
        count = weight.sum(-1)
        return torch.where(count > 0, (lengths * weight).sum(-1) / count.clamp(min=1), nan)

    return mean_over(correct), mean_over(1 - correct)


def run(recipe: Recipe, start: StackedGPT2Policy, task: Task, scale: Scale, *, seed: int = 0,
        device: str | torch.device | None = None, progress: bool | None = None) -> Run:
    """Train a copy of ``start`` with ``recipe`` for ``scale.steps`` outer steps (``scale.prompts_per_step``
    prompts x ``scale.group_size`` completions each); the start itself is left untouched."""
    policy = copy.deepcopy(start)
    batches, correct, incorrect, holder = [], [], [], {}

    def keep(outer_step: int, inner_step: int, batch: Batch) -> None:
        if inner_step == 0:
            batches.append(batch)
            right, wrong = lengths_by_correctness(batch)
            correct.append(right.cpu())
            incorrect.append(wrong.cpu())

    def build(params: list[torch.nn.Parameter]) -> InstrumentedAdamW:
        holder["optimizer"] = recipe.optimizer()(params)
        return holder["optimizer"]

    history = train(policy, task, recipe.objective, optimizer=build, steps=scale.steps,
                    group_size=scale.group_size, prompts_per_step=scale.prompts_per_step,
                    inner_steps=recipe.inner_steps, seed=seed, device=device, progress=progress,
                    after_step=True, on_step=keep)
    history.config["recipe"] = recipe.name
    return Run(recipe, policy, history, batches, holder["optimizer"], torch.stack(correct).numpy(),
               torch.stack(incorrect).numpy())
