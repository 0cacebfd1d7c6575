"""A ``cp.Objective`` as a verl 0.9.1 policy loss (``register_policy_loss``'s signature, ``loss_agg_mode``).

In a verl entry point (before the trainer starts)::

    import companion as cp
    from companion.integrations.verl import register
    register(cp.Objective.preset("dr_grpo", beta=0.0), name="companion_dr_grpo")
    # actor_rollout_ref.actor.policy_loss.loss_mode=companion_dr_grpo

:func:`policy_loss_fn` needs only torch: it returns a function with verl's ``PolicyLossFn`` signature,
``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights) ->
(pg_loss, metrics)``. :func:`register` imports verl and puts it in verl's registry.

What the function computes: the policy part of the Objective's Eq. 1 loss on verl's (bs, T) tensors, with

- α from ``loss_agg_mode`` (``aggregation="loss_agg_mode"``, the default, so that a verl config keeps its
  meaning; SAPO's soft gate and GMPO's geometric mean keep their own, as verl's do), or from the
  Objective (``aggregation="objective"``);
- verl's global normalisation (``config.global_batch_info``: ``dp_size``, ``batch_num_tokens``,
  ``global_batch_size``, ``loss_scale_factor``), so that the per-rank losses add up as verl's do.

With ``cp.Objective.from_verl(...)`` of the same actor fields it equals verl's own loss (value and
gradient, fp64, 1e-6: ``tests/test_integrations_verl.py``, against verl's functions when verl is installed
and against ``tests/conformance``'s references always). Not covered, each a ValueError: β > 0 or an entropy
term in the Objective (verl adds its KL and entropy terms itself, from ``use_kl_loss`` / ``kl_loss_coef`` /
``entropy_coeff``: the policy loss never sees π_ref), GTPO (its conflict tokens need the group's token
ids), and rollout-correction weights. verl computes the advantages before the loss: choose
``algorithm.adv_estimator`` and ``norm_adv_by_std_in_grpo`` to match the Objective's baseline and σ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from companion import trainers
from companion.objective import Objective

AGGREGATION_SOURCES = ("loss_agg_mode", "objective")
_OWN_AGGREGATION = ("geometric_mean", "soft_gate")  # verl's geo_mean and sapo ignore loss_agg_mode
PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Any]]]


def policy_loss_fn(objective: Objective, *, aggregation: str = "loss_agg_mode") -> PolicyLossFn:
    """verl's ``PolicyLossFn`` computing ``objective``'s policy loss (module docstring)."""
    _check(objective, aggregation)

    def companion_policy_loss(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor,
                              response_mask: Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                              rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
        if rollout_is_weights is not None:
            raise ValueError("companion's verl policy loss does not apply rollout-correction weights "
                             "(rollout_is_weights); switch algorithm.rollout_correction off")
        info = dict(getattr(config, "global_batch_info", None) or {})
        scale_factor = info.get("loss_scale_factor", getattr(config, "loss_scale_factor", None))
        used = objective_for_mode(objective, loss_agg_mode, scale_factor) \
            if aggregation == "loss_agg_mode" else objective
        out = used.loss(log_prob, old_log_prob, advantages, response_mask)
        loss = out.policy_loss * _global_scale(used, response_mask, info)
        return loss, _metrics(out, log_prob, old_log_prob, response_mask)

    companion_policy_loss.objective = objective  # type: ignore[attr-defined]
    return companion_policy_loss


def register(objective: Objective, name: str = "companion", *, aggregation: str = "loss_agg_mode") -> str:
    """Put :func:`policy_loss_fn` in verl's registry under ``name`` (set ``policy_loss.loss_mode`` to it)."""
    try:
        from verl.trainer.ppo.core_algos import register_policy_loss
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"companion.integrations.verl.register needs verl 0.9.1 ({error.name!r} is "
                                  "missing): pip install verl==0.9.1", name=error.name) from error
    register_policy_loss(name)(policy_loss_fn(objective, aggregation=aggregation))
    return name


def objective_for_mode(objective: Objective, loss_agg_mode: str, loss_scale_factor: float | None = None
                       ) -> Objective:
    """``objective`` with α set by verl's ``loss_agg_mode`` (unchanged for the soft gate and GMPO)."""
    if loss_agg_mode not in trainers.VERL_AGG_MODES:
        raise ValueError(f"loss_agg_mode={loss_agg_mode!r} is not one of {list(trainers.VERL_AGG_MODES)}")
    if objective.surrogate in _OWN_AGGREGATION:
        return objective
    aggregation = trainers._VERL_AGGREGATION[loss_agg_mode]
    length = loss_scale_factor if aggregation == "constant" else None
    return objective.with_(aggregation=aggregation, constant_length=length)


def _global_scale(objective: Objective, mask: Tensor, info: dict[str, Any]) -> float | Tensor:
    """The factor from the Objective's per-micro-batch normaliser to verl's global one (``agg_loss``)."""
    dp_size = info.get("dp_size") or 1
    kind = objective.aggregation
    if kind == "seq_mean":  # GMPO: verl takes a plain mean over the micro-batch's rows, as the Objective
        return 1.0
    if kind == "token_mean":
        tokens = info.get("batch_num_tokens")
        local = mask.sum()
        return local / (local if tokens is None else tokens) * dp_size
    if kind == "token_sum":
        return float(dp_size)
    rows = info.get("global_batch_size")
    return mask.shape[0] / (_nonempty_rows(mask) if rows is None else rows) * dp_size


def _nonempty_rows(mask: Tensor) -> Tensor:
    return (mask.sum(-1) > 0).sum()


def _metrics(out: Any, log_prob: Tensor, old_log_prob: Tensor, mask: Tensor) -> dict[str, float]:
    """verl's metric names for the clip (pg_clipfrac, pg_clipfrac_lower = dual clip, ppo_kl), and the
    book's: each side of the clip, the ratio extremes."""
    valid = mask.bool()
    with torch.no_grad():
        ratio = out.ratio.expand_as(log_prob)[valid]
        kl = (old_log_prob - log_prob)[valid].mean() if valid.any() else torch.zeros(())
    low, high = float(out.clip_fraction_low), float(out.clip_fraction_high)
    return {
        "actor/pg_clipfrac": low + high,
        "actor/pg_clipfrac_lower": float(out.clip_fraction_dual),
        "actor/ppo_kl": float(kl),
        "companion/clip_fraction_low": low,
        "companion/clip_fraction_high": high,
        "companion/ratio_min": float(ratio.min()) if ratio.numel() else float("nan"),
        "companion/ratio_max": float(ratio.max()) if ratio.numel() else float("nan"),
    }


def _check(objective: Objective, aggregation: str) -> None:
    if aggregation not in AGGREGATION_SOURCES:
        raise ValueError(f"aggregation must be one of {AGGREGATION_SOURCES}, got {aggregation!r}")
    problems = []
    if objective.beta:
        problems.append(f"beta={objective.beta} (set verl's use_kl_loss, kl_loss_coef, kl_loss_type instead: "
                        "the policy loss receives no reference log-probs)")
    if objective.entropy_coef:
        problems.append(f"entropy_coef={objective.entropy_coef} (verl's actor.entropy_coeff adds it)")
    if objective.gtpo:
        problems.append("gtpo=True (its conflict tokens need token ids and groups; the loss sees neither)")
    if problems:
        raise ValueError("this Objective cannot be a verl policy loss: " + "; ".join(problems))
