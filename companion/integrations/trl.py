"""TRL 1.16's ``GRPOTrainer`` optimising any ``cp.Objective``, and a callback logging the book's diagnostics.

What a TRL script adds (README, chapter 7)::

    import companion as cp
    from companion.integrations.trl import DiagnosticsCallback, GRPOTrainer
    objective = cp.Objective.preset("dr_grpo", beta=0.0)        # or any Objective, subclass or loss hook
    optimizer = cp.InstrumentedAdamW(model.parameters(), lr=args.learning_rate)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                          objective=objective, optimizers=(optimizer, None),
                          callbacks=[DiagnosticsCallback()])

``objective=None`` reads the loss from ``args``: ``cp.Objective.from_trl(...)`` of the same fields, whose
loss equals TRL's own to 1e-6 (value and gradient, fp64; ``tests/test_integrations_trl.py``). The
advantages come from ``objective.advantages`` of the summed rewards (``advantages="objective"``) or are
left as TRL computed them (``advantages="trl"``).

Every optimizer step, :class:`DiagnosticsCallback` records one row (``callback.history()`` is a
``cp.lab.History`` with the lab's column names) and hands it to TRL's logs under ``companion/<name>``:
reward, length, tied groups, the loss and its parts, KL to π_old and π_ref, entropy, W_agg on shared
prefixes per group (ch. 3), the clip fractions on each side, the tokens past each clip boundary and the
ratio extremes at every inner iteration (ch. 5), the ε-dominated fraction of Adam's coordinates (ch. 4),
Cov(A, Ω) (App. A, Eq. 11; ch. 6) and, with ``cp.InstrumentedAdamW``, its own per-step record
(``opt_<key>``). See ``companion.integrations.diagnostics`` for the definitions.

Scope, checked at construction (each unsupported setting is a ValueError naming it): one reward
aggregation (``multi_objective_aggregation="sum_then_normalize"`` when the objective computes the
advantages), no vLLM importance-sampling correction, no entropy mask or bonus, no off-policy mask, and no
``loss_type="vespo"`` for the default objective. With several micro-batches per optimizer step, a
``token_mean`` objective is normalised by the step's token count (TRL's ``num_items_in_batch``), every
other one is averaged over the micro-batches (TRL's ``current_gradient_accumulation_steps``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from companion._extras import require

require("trl", feature="companion.integrations.trl")

import trl  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from companion import trainers  # noqa: E402
from companion.integrations.diagnostics import batch_diagnostics  # noqa: E402
from companion.objective import LossOutput, Objective  # noqa: E402

TRL_LOSS_FIELDS = trainers.TRL_FIELDS
ADVANTAGE_SOURCES = ("objective", "trl")
LossHook = Callable[..., Any]

# TRL settings the bridge does not reproduce, with the value at which they are off
_UNSUPPORTED = {
    "top_entropy_quantile": 1.0,
    "off_policy_mask_threshold": None,
    "entropy_coef": 0.0,
    "use_adaptive_entropy": False,
}


def objective_from_args(args: Any) -> Objective:
    """``cp.Objective.from_trl`` of a ``GRPOConfig``'s loss fields: what TRL itself would optimise."""
    return Objective.from_trl(**{name: getattr(args, name) for name in TRL_LOSS_FIELDS})


class GRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` whose loss is ``objective`` (Eq. 1), with the same arguments plus:

    objective: a ``cp.Objective`` (or subclass), any object with the same ``loss`` (and, for
        ``advantages="objective"``, ``advantages``) methods, or a loss hook
        ``hook(logprobs, old_logprobs, advantages, mask, ref_logprobs=None, tokens=None, entropies=None)``
        returning a ``LossOutput`` or a scalar tensor; None: ``objective_from_args(args)``.
    advantages: "objective" (``objective.advantages`` of the summed rewards, groups of
        ``num_generations``; a loss hook has none, so TRL's are kept) or "trl" (TRL's own advantages;
        the objective only defines the loss).
    """

    def __init__(self, *args: Any, objective: Objective | LossHook | None = None,
                 advantages: str = "objective", **kwargs: Any) -> None:
        if advantages not in ADVANTAGE_SOURCES:
            raise ValueError(f"advantages must be one of {ADVANTAGE_SOURCES}, got {advantages!r}")
        super().__init__(*args, **kwargs)
        self.objective = objective_from_args(self.args) if objective is None else objective
        self.advantage_source = advantages
        _check_supported(self.args, advantages, self.objective, self.use_vllm)
        self._companion_rewards: Tensor | None = None
        self.diagnostics = next((c for c in self.callback_handler.callbacks
                                 if isinstance(c, DiagnosticsCallback)), None)
        if self.diagnostics is not None:
            self.diagnostics.attach(self)

    # --- rewards and advantages --------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_function = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        weights = self.reward_weights.to(per_function.device)
        rewards = (per_function * weights).nansum(dim=1)
        self._companion_rewards = rewards.masked_fill(torch.isnan(per_function).all(dim=1), math.nan)
        return per_function

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        local = output["completion_ids"].shape[0]
        start = self.accelerator.process_index * local
        rewards = self._companion_rewards
        rows = torch.arange(start, start + local, device=rewards.device)
        output["companion_group"] = rows // group_size
        output["companion_rewards"] = rewards[rows]
        if self.advantage_source == "objective" and hasattr(self.objective, "advantages"):
            mask = output["completion_mask"] if self.accelerator.num_processes == 1 else None
            output["advantages"] = _objective_advantages(self.objective, rewards, group_size, mask)[rows]
        return output

    # --- the loss ------------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        logprobs, entropies, aux_loss = self._logprobs(model, inputs)
        old = inputs.get("old_per_token_logps")
        old = logprobs.detach() if old is None else old
        logprobs = logprobs.to(_promoted_dtype(logprobs, old, inputs))  # as TRL's own arithmetic promotes
        out = self.objective_output(logprobs, old, inputs["advantages"], mask,
                                    ref_logprobs=inputs.get("ref_per_token_logps"),
                                    tokens=inputs["completion_ids"], entropies=entropies,
                                    group_size=None)
        mode = "train" if self.model.training else "eval"
        loss = _loss_of(out) * self._normaliser(inputs, mask, mode)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / self._accumulation(mode)
        self._log_trl_metrics(mode, out, logprobs, entropies, mask, inputs)
        if mode == "train" and self.diagnostics is not None and isinstance(out, LossOutput):
            self.diagnostics.observe(self._measure(out, logprobs, old, entropies, mask, inputs))
        return loss

    def objective_output(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                         **extra: Any) -> LossOutput | Tensor:
        """The objective's loss on one micro-batch (a ``LossOutput`` for an Objective)."""
        if hasattr(self.objective, "loss"):
            if not _needs_gtpo_inputs(self.objective):
                extra = {k: v for k, v in extra.items() if k == "ref_logprobs"}
            return self.objective.loss(logprobs, old_logprobs, advantages, mask, **extra)
        return self.objective(logprobs, old_logprobs, advantages, mask, **extra)

    def _logprobs(self, model, inputs):
        """TRL's own forward pass: per-token log-probs, entropies and the router loss of the completions."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        extra = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                 "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
        return self._get_per_token_logps_and_entropies(
            model, input_ids, attention, inputs["completion_ids"].size(1), compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **{key: inputs.get(key) for key in extra})

    def _accumulation(self, mode: str) -> float:
        return float(self.current_gradient_accumulation_steps) if mode == "train" else 1.0

    def _normaliser(self, inputs: dict[str, Any], mask: Tensor, mode: str) -> float | Tensor:
        """The factor that turns one micro-batch's loss into its share of the optimizer step's loss."""
        aggregation = getattr(self.objective, "aggregation", None)
        if aggregation != "token_mean" or "num_items_in_batch" not in inputs:
            return 1.0 / self._accumulation(mode)
        step_tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            step_tokens = step_tokens * self._accumulation(mode) / self.args.steps_per_generation
        return mask.sum().clamp(min=1.0) / step_tokens

    def _log_trl_metrics(self, mode: str, out: Any, logprobs: Tensor, entropies: Tensor, mask: Tensor,
                         inputs: dict[str, Any]) -> None:
        """TRL's usual loss metrics (entropy, kl, clip_ratio/*), from the objective's own diagnostics."""
        metrics = self._metrics[mode]
        tokens = mask.sum().clamp(min=1.0)
        metrics["entropy"].append(float((entropies.detach() * mask).sum() / tokens))
        ref = inputs.get("ref_per_token_logps")
        if ref is not None:
            diff = ref - logprobs.detach()
            metrics["kl"].append(float(((torch.expm1(diff) - diff) * mask).sum() / tokens))
        if isinstance(out, LossOutput):
            low, high = float(out.clip_fraction_low), float(out.clip_fraction_high)
            metrics["clip_ratio/low_mean"].append(low)
            metrics["clip_ratio/high_mean"].append(high)
            metrics["clip_ratio/region_mean"].append(low + high)

    # --- diagnostics -------------------------------------------------------------------------------------
    def inner_iteration(self) -> int:
        """Which of the ``num_iterations`` passes over the current generation batch this micro-step is."""
        steps = self.args.steps_per_generation
        return (self._step % (steps * self.num_iterations)) // steps

    def _measure(self, out: LossOutput, logprobs: Tensor, old: Tensor, entropies: Tensor, mask: Tensor,
                 inputs: dict[str, Any]) -> dict[str, float]:
        clipped = getattr(self.objective, "surrogate", None) == "clip"
        clip_low = self.objective.clip_low if clipped else None
        clip_high = self.objective.clip_high if clipped else None
        groups = inputs["companion_group"]
        row = batch_diagnostics(out, inputs["completion_ids"], mask, inputs["advantages"], groups,
                                clip_low=clip_low, clip_high=clip_high)
        lp, tokens = logprobs.detach(), mask.sum().clamp(min=1.0)
        ref = inputs.get("ref_per_token_logps")
        rewards = inputs["companion_rewards"].double()
        row.update({
            "inner_step": float(self.inner_iteration()),
            "reward": float(torch.nanmean(rewards)),
            "length": float(mask.sum(-1).double().mean()),
            "tied_fraction": _tied_fraction(rewards, groups),
            "entropy": float((entropies.detach() * mask).sum() / tokens),
            "kl_old": float((_k3(old - lp) * mask).sum() / tokens),
            "kl_ref": math.nan if ref is None else float((_k3(ref - lp) * mask).sum() / tokens),
        })
        return row


def _objective_advantages(objective: Any, rewards: Tensor, group_size: int, mask: Tensor | None) -> Tensor:
    """Eq. 2 (and its variants) from the objective; completions without a reward get A = 0, and the mean of
    their group's scored completions in its place (TRL leaves them out of the group statistics instead)."""
    unscored = torch.isnan(rewards)
    if unscored.any():
        groups = rewards.view(-1, group_size)
        fill = torch.nanmean(groups, dim=1, keepdim=True).nan_to_num(0.0).expand_as(groups).reshape(-1)
        rewards = torch.where(unscored, fill, rewards)
    advantages = objective.advantages(rewards, group_size, mask)
    return advantages.masked_fill(unscored.view(-1, *[1] * (advantages.dim() - 1)), 0.0)


def _promoted_dtype(logprobs: Tensor, old: Tensor, inputs: dict[str, Any]) -> torch.dtype:
    """The dtype TRL's loss arithmetic ends in: TRL's fused head returns float32 log-probs, which mix with
    π_old, π_ref and the advantages (float64 when those are)."""
    dtype = torch.promote_types(logprobs.dtype, old.dtype)
    for key in ("ref_per_token_logps", "advantages"):
        if isinstance(inputs.get(key), Tensor) and inputs[key].is_floating_point():
            dtype = torch.promote_types(dtype, inputs[key].dtype)
    return dtype


def _needs_gtpo_inputs(objective: Any) -> bool:
    return bool(getattr(objective, "gtpo", False) or getattr(objective, "entropy_coef", 0.0))


def _loss_of(out: Any) -> Tensor:
    return out.loss if hasattr(out, "loss") else out


def _k3(log_ratio: Tensor) -> Tensor:
    return torch.expm1(log_ratio) - log_ratio


def _tied_fraction(rewards: Tensor, groups: Tensor) -> float:
    """Share of the micro-batch's groups whose rewards are all equal (A = 0 for the whole group)."""
    ids = torch.unique(groups)
    tied = [bool((rewards[groups == g] == rewards[groups == g][0]).all()) for g in ids.tolist()]
    return sum(tied) / max(len(tied), 1)


def _check_supported(args: Any, advantages: str, objective: Any, use_vllm: bool) -> None:
    problems = [f"{name}={getattr(args, name)!r} (supported: {off!r})" for name, off in _UNSUPPORTED.items()
                if getattr(args, name, off) != off]
    if use_vllm and getattr(args, "vllm_importance_sampling_correction", False):
        problems.append("vllm_importance_sampling_correction=True with use_vllm (supported: False)")
    if advantages == "objective" and args.multi_objective_aggregation != "sum_then_normalize":
        problems.append(f"multi_objective_aggregation={args.multi_objective_aggregation!r} with "
                        "advantages='objective' (supported: 'sum_then_normalize', or advantages='trl')")
    if getattr(objective, "gtpo", False):
        problems.append("a GTPO objective (its conflict tokens need contiguous groups; TRL shuffles them)")
    if problems:
        raise ValueError("companion's GRPOTrainer does not reproduce these GRPOConfig settings: "
                         + "; ".join(problems))


class DiagnosticsCallback(TrainerCallback):
    """Logs the book's diagnostics every optimizer step (module docstring); ``history()`` returns them.

    Add it to ``callbacks=[...]`` of :class:`GRPOTrainer`. Each row averages the micro-batches of one
    optimizer step (minimum and maximum for the ratio extremes), adds the ε-dominated fraction of the
    optimizer's Adam state (any torch Adam/AdamW, through ``cp.theory.eps_ratio``) and, with
    ``cp.InstrumentedAdamW``, its latest history row as ``opt_<key>``. The row goes to ``history()`` and, as
    ``companion/<key>``, to TRL's logs (averaged over ``logging_steps`` like TRL's own metrics).
    """

    LOG_PREFIX = "companion/"

    def __init__(self) -> None:
        self._rows: list[dict[str, float]] = []
        self._pending: list[dict[str, float]] = []
        self._sink: dict[str, list[float]] | None = None

    def attach(self, trainer: GRPOTrainer) -> None:
        """Called by :class:`GRPOTrainer`: where the rows go in TRL's logs."""
        self._sink = trainer._metrics["train"]

    def observe(self, row: dict[str, float]) -> None:
        """One micro-batch's measurements (called by :class:`GRPOTrainer`)."""
        self._pending.append(row)

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        row = _combine(self._pending)
        self._pending = []
        steps_per_batch = args.steps_per_generation * args.num_iterations // args.gradient_accumulation_steps
        row["outer_step"] = float((state.global_step - 1) // max(steps_per_batch, 1))
        row["step"] = float(state.global_step)
        row.update(_optimizer_row(optimizer))
        self._rows.append(row)
        if self._sink is not None:
            for key, value in row.items():
                if key not in ("step", "outer_step") and math.isfinite(value):
                    self._sink[self.LOG_PREFIX + key].append(value)

    def rows(self) -> list[dict[str, float]]:
        """The recorded rows, one per optimizer step, as dicts of floats."""
        return [dict(row) for row in self._rows]

    def history(self) -> Any:
        """The record as a ``cp.lab.History`` (one row per optimizer step; NaN where a value is missing)."""
        from companion.lab import History

        keys = sorted({key for row in self._rows for key in row})
        columns = {key: np.array([row.get(key, math.nan) for row in self._rows]) for key in keys}
        for key in ("outer_step", "inner_step"):
            if key in columns:
                columns[key] = columns[key].astype(np.int64)
        return History(columns, 1, {"source": "companion.integrations.trl.DiagnosticsCallback"})


_EXTREMES = {"ratio_min": min, "ratio_max": max, "w_agg_max": max}


def _combine(rows: list[dict[str, float]]) -> dict[str, float]:
    """One optimizer step from its micro-batches: means, and min/max for the extremes."""
    if not rows:
        return {}
    combined = {}
    for key in rows[0]:
        values = [row[key] for row in rows if not math.isnan(row[key])]
        if not values:
            combined[key] = math.nan
        elif key in _EXTREMES:
            combined[key] = float(_EXTREMES[key](values))
        else:
            combined[key] = float(sum(values) / len(values))
    return combined


def _optimizer_row(optimizer: Any) -> dict[str, float]:
    """ε-dominated fraction of any Adam state, plus ``cp.InstrumentedAdamW``'s own last row (totals)."""
    from companion.theory import eps_ratio

    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer
        optimizer = optimizer.optimizer
    if optimizer is None:
        return {}
    row = {}
    if all("betas" in group and "eps" in group for group in optimizer.param_groups):
        ratios = eps_ratio(optimizer)
        row["eps_dominated_frac"] = float((ratios >= 1).double().mean()) if ratios.numel() else math.nan
    history = getattr(optimizer, "history", None)
    if history is not None and len(history):
        for key in history.keys():  # noqa: SIM118 (optim.History has keys(), no __iter__)
            if "/" not in key:
                row[f"opt_{key}"] = float(history[key][-1])
    return row


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence TRL, transformers, accelerate and datasets for a run: their loggers to ERROR, their progress
    bars off, and the deprecation warnings they raise about their own internals. Restored on exit."""
    import datasets
    import transformers

    loggers = [logging.getLogger(name) for name in ("transformers", "trl", "accelerate", "datasets")]
    levels = [logger.level for logger in loggers]
    bars = datasets.utils.logging.is_progress_bar_enabled()
    transformers_verbosity = transformers.logging.get_verbosity()
    try:
        transformers.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            for module in ("transformers", "trl", "accelerate"):
                warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{module}(\.|$)")
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=rf"{module}(\.|$)")
            yield
    finally:
        transformers.logging.set_verbosity(transformers_verbosity)
        if bars:
            datasets.enable_progress_bars()
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
