"""Translate the loss settings of TRL 1.16.0's `GRPOConfig` and verl 0.9.1's actor into an `Objective`.

`Objective.from_trl(...)` and `Objective.from_verl(...)` delegate here. Each returns the Objective whose
`advantages` and `loss` compute what that trainer computes in one process with one micro-batch (same
value and same gradient wrt the log-probs, to 1e-6 in fp64; tests/conformance/ checks every case against
plain re-implementations of the two libraries, and tests/conformance/SPEC.md gives the formulas and where
they were read). Neither library is imported.
"""

from __future__ import annotations

from typing import Any

from companion.objective import Objective

TRL_VERSION = "1.16.0"
VERL_VERSION = "0.9.1"

TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
TRL_IS_LEVELS = ("token", "sequence")
TRL_SCALE_REWARDS = ("group", "batch", "none")
TRL_FIELDS = (
    "loss_type",
    "importance_sampling_level",
    "epsilon",
    "epsilon_high",
    "delta",
    "beta",
    "scale_rewards",
    "max_completion_length",
    "use_bias_correction_kl",
    "sapo_temperature_pos",
    "sapo_temperature_neg",
)

VERL_POLICY_LOSSES = ("vanilla", "gspo", "gpg", "cispo", "geo_mean", "sapo")
VERL_AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
VERL_KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
VERL_KL_TYPES += tuple(f"{k}+" for k in VERL_KL_TYPES)  # "+": the value of k, the gradient of k2
VERL_ADV_ESTIMATORS = ("grpo", "rloo", "gpg", "reinforce_plus_plus")
VERL_FIELDS = (
    "policy_loss",
    "loss_agg_mode",
    "clip_ratio",
    "clip_ratio_low",
    "clip_ratio_high",
    "clip_ratio_c",
    "tau_pos",
    "tau_neg",
    "use_kl_loss",
    "kl_loss_coef",
    "kl_loss_type",
    "loss_scale_factor",
    "adv_estimator",
    "norm_adv_by_std_in_grpo",
)


def _reject_unknown(function: str, unknown: dict[str, Any], supported: tuple[str, ...]) -> None:
    if unknown:
        raise TypeError(
            f"{function}() got unsupported field(s) {sorted(unknown)}; "
            f"the supported fields are {list(supported)}"
        )


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; valid values are {list(choices)}")


def _require_positive(
    name: str, value: float | None, *, allow_zero: bool = False, optional: bool = False
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


_TRL_AGGREGATION = {
    "grpo": "seq_mean_token_mean",
    "sapo": "seq_mean_token_mean",
    "bnpo": "token_mean",
    "dapo": "token_mean",  # num_items_in_batch = the batch's active tokens in one process
    "cispo": "token_mean",
    "dr_grpo": "constant",  # 1 / (N * max_completion_length)
    "luspo": "seq_mean_token_sum",  # (per_token_loss * mask).sum(-1).mean(): 1 / N
}

_VERL_AGGREGATION = {
    "token-mean": "token_mean",
    "token-sum": "token_sum",
    "seq-mean-token-sum": "seq_mean_token_sum",
    "seq-mean-token-mean": "seq_mean_token_mean",
    "seq-mean-token-sum-norm": "constant",  # 1 / (N * (loss_scale_factor or T))
}


def objective_from_trl(
    *,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    scale_rewards: str | bool = "group",
    max_completion_length: int = 512,
    use_bias_correction_kl: bool = True,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    **unsupported: Any,
) -> Objective:
    """The Objective that TRL 1.16.0's `GRPOTrainer` optimises, from `GRPOConfig` loss fields.

    Fields and defaults are TRL's: `loss_type="dapo"`, `importance_sampling_level="token"`, `epsilon=0.2`,
    `epsilon_high=None`, `delta=None`, `beta=0.0`, `scale_rewards="group"` (or the legacy booleans),
    `max_completion_length=512`, `use_bias_correction_kl=True`, `sapo_temperature_pos=1.0`,
    `sapo_temperature_neg=1.05`. One process and one micro-batch per optimiser step are assumed (then
    `dapo`/`cispo` normalise by the batch's active tokens, like `bnpo`). `luspo` is the clipped surrogate
    summed over each completion's tokens and averaged over completions (α = 1/N). TRL's `vespo` (a
    gamma-shaped weight of the sequence ratio) has no reading in Eq. 1's terms and is rejected. The fields
    are validated with TRL's names before the reading is built.
    """
    _reject_unknown("from_trl", unsupported, TRL_FIELDS)
    _require_choice("loss_type", loss_type, TRL_LOSS_TYPES)
    _require_choice("importance_sampling_level", importance_sampling_level, TRL_IS_LEVELS)
    if isinstance(scale_rewards, bool):  # GRPOConfig.__post_init__: True -> "group", False -> "none"
        scale_rewards = "group" if scale_rewards else "none"
    _require_choice("scale_rewards", scale_rewards, TRL_SCALE_REWARDS)
    _require_positive("epsilon", epsilon, allow_zero=True)
    _require_positive("epsilon_high", epsilon_high, allow_zero=True, optional=True)
    _require_positive("delta", delta, optional=True)
    _require_positive("beta", beta, allow_zero=True)
    _require_positive("max_completion_length", max_completion_length)
    _require_positive("sapo_temperature_pos", sapo_temperature_pos)
    _require_positive("sapo_temperature_neg", sapo_temperature_neg)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    clipped = loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
    surrogate = {"cispo": "is_weighted_log_prob", "sapo": "soft_gate"}.get(loss_type, "clip")
    source = f"trl {TRL_VERSION} loss_type={loss_type} level={importance_sampling_level}"
    return Objective(
        name=source,
        source=source,
        std_scale=None if scale_rewards == "none" else scale_rewards,
        std_eps=1e-4,
        ratio_level=importance_sampling_level,
        surrogate=surrogate,
        clip_low=epsilon if clipped else None,
        clip_high=eps_high if clipped else None,
        ratio_cap=delta if clipped else None,
        is_weight_low=None,  # TRL's CISPO weight is min(w, epsilon_high): one-sided, capped at eps_high
        is_weight_high=eps_high if loss_type == "cispo" else None,
        sapo_temperatures=(sapo_temperature_pos, sapo_temperature_neg) if loss_type == "sapo" else None,
        aggregation=_TRL_AGGREGATION[loss_type],
        constant_length=float(max_completion_length) if loss_type == "dr_grpo" else None,
        kl="k3" if beta else None,
        beta=beta,
        kl_ratio_weighted=bool(beta) and use_bias_correction_kl,
        kl_aggregation=_TRL_AGGREGATION[loss_type],  # TRL adds beta*KL per token before aggregating
    )


def objective_from_verl(
    *,
    policy_loss: str = "vanilla",
    loss_agg_mode: str = "token-mean",
    clip_ratio: float = 0.2,
    clip_ratio_low: float | None = 0.2,
    clip_ratio_high: float | None = 0.2,
    clip_ratio_c: float = 3.0,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    use_kl_loss: bool = False,
    kl_loss_coef: float = 0.001,
    kl_loss_type: str = "low_var_kl",
    loss_scale_factor: float | None = None,
    adv_estimator: str = "grpo",
    norm_adv_by_std_in_grpo: bool = True,
    **unsupported: Any,
) -> Objective:
    """The Objective that verl 0.9.1's actor (`ppo_loss`) optimises, from actor and algorithm fields.

    Fields and defaults are verl's: `policy_loss="vanilla"` (actor.policy_loss.loss_mode),
    `loss_agg_mode="token-mean"`, `clip_ratio=0.2`, `clip_ratio_low=0.2`, `clip_ratio_high=0.2` (so
    `clip_ratio` matters only when both are None), `clip_ratio_c=3.0`, `tau_pos=1.0`, `tau_neg=1.05`,
    `use_kl_loss=False`, `kl_loss_coef=0.001`, `kl_loss_type="low_var_kl"`, `loss_scale_factor=None`,
    `norm_adv_by_std_in_grpo=True`; `adv_estimator` defaults to "grpo" (verl's "gae" needs a critic).
    One data-parallel rank and one micro-batch per mini-batch are assumed. The fields are validated with
    verl's names before the reading is built.
    """
    _reject_unknown("from_verl", unsupported, VERL_FIELDS)
    _require_choice("policy_loss", policy_loss, VERL_POLICY_LOSSES)
    _require_choice("loss_agg_mode", loss_agg_mode, VERL_AGG_MODES)
    _require_choice("kl_loss_type", kl_loss_type, VERL_KL_TYPES)
    _require_choice("adv_estimator", adv_estimator, VERL_ADV_ESTIMATORS)
    _require_positive("clip_ratio", clip_ratio, allow_zero=True)
    _require_positive("clip_ratio_low", clip_ratio_low, allow_zero=True, optional=True)
    _require_positive("clip_ratio_high", clip_ratio_high, allow_zero=True, optional=True)
    _require_positive("clip_ratio_c", clip_ratio_c)
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (verl asserts it), got {clip_ratio_c!r}")
    _require_positive("tau_pos", tau_pos)
    _require_positive("tau_neg", tau_neg)
    _require_positive("kl_loss_coef", kl_loss_coef, allow_zero=True)
    _require_positive("loss_scale_factor", loss_scale_factor, optional=True)
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    aggregation = _VERL_AGGREGATION[loss_agg_mode]
    if policy_loss == "sapo":
        aggregation = "seq_mean_token_mean"  # verl's SAPO ignores loss_agg_mode
    elif policy_loss == "geo_mean":
        aggregation = "seq_mean"  # so does GMPO: mean over rows of one sequence-level term
    straight_through = kl_loss_type.endswith("+")
    kl = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3",
          "k3": "k3"}[kl_loss_type.rstrip("+")]
    surrogates = {
        "gpg": "log_prob",
        "cispo": "is_weighted_log_prob",
        "geo_mean": "geometric_mean",
        "sapo": "soft_gate",
    }
    surrogate = surrogates.get(policy_loss, "clip")
    clipped = policy_loss in ("vanilla", "gspo", "geo_mean")
    source = f"verl {VERL_VERSION} policy_loss={policy_loss} loss_agg_mode={loss_agg_mode}"
    return Objective(
        name=source,
        source=source,
        baseline={"rloo": "leave_one_out", "reinforce_plus_plus": "batch_whiten"}.get(
            adv_estimator, "group_mean"
        ),
        std_scale="group" if adv_estimator == "grpo" and norm_adv_by_std_in_grpo else None,
        std_eps=1e-6,
        gpg_alpha="nonzero_reward" if adv_estimator == "gpg" else None,
        ratio_level="sequence" if policy_loss == "gspo" else "token",
        surrogate=surrogate,
        clip_low=low if clipped else None,
        clip_high=high if clipped else None,
        dual_clip=clip_ratio_c if policy_loss == "vanilla" else None,
        is_weight_low=1.0 - low if policy_loss == "cispo" else None,
        is_weight_high=1.0 + high if policy_loss == "cispo" else None,
        sapo_temperatures=(tau_pos, tau_neg) if policy_loss == "sapo" else None,
        aggregation=aggregation,
        constant_length=loss_scale_factor if loss_agg_mode == "seq-mean-token-sum-norm" else None,
        kl=kl if use_kl_loss else None,
        beta=kl_loss_coef if use_kl_loss else 0.0,
        kl_clamped=True,
        kl_straight_through=straight_through and kl != "k2",
        kl_aggregation=_VERL_AGGREGATION[loss_agg_mode],  # the KL term always follows loss_agg_mode
        max_log_ratio=10.0 if policy_loss == "gspo" else 20.0,  # verl clamps GSPO's log s at 10
    )
