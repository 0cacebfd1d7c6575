"""The unified surrogate objective of Eq. 1, with every choice of Table 1 as a field of one config.

    J(θ) = Σ_i Σ_t α_{i,t} · f(s_{i,t}(θ), A_i) − β R(θ),   f(s, A) = min(s A, clip(s, 1−ε_low, 1+ε_up) A)

``Objective`` is a frozen dataclass; ``Objective.preset(name)`` gives the methods of Table 1 and the extras
(``companion.methods``), ``Objective.from_trl`` / ``Objective.from_verl`` what those trainers compute
(``companion.trainers``). Two calls do all the work::

    obj = cp.Objective.preset("grpo_r1")
    adv = obj.advantages(rewards, group_size=8)              # Eq. 2: (N,) -> (N,), groups contiguous
    out = obj.loss(logprobs, old_logprobs, adv, mask, ref_logprobs=ref)   # (N, T) tensors
    out.loss.backward()                                      # the scalar to minimise, -J
    out.clip_fraction_high, out.weights, out.ratio           # diagnostics, detached, computed on access

Conventions. N completions padded to T tokens, groups of ``group_size`` contiguous rows; ``mask`` is 1 on
the tokens in the loss, ``|o_i| = Σ_t mask``. Over a batch of B groups the paper's "1/G" is 1/N (the
expectation over prompts is the batch mean). The σ(r) that Table 1 folds into α is applied by
``advantages`` instead, as trainers do; the product α·A, hence the loss and its gradient, is the same.

Batches of batches: ``batch_dims=k`` in ``advantages`` and ``loss`` adds k leading axes of independent
batches (the lab's S seeds: rewards (S, N), log-probs (S, N, T)). Every sum over a batch stays within it,
the loss and the scalar diagnostics get shape (S,), and each batch gets the numbers of a call on it alone
(the same operations as ``torch.func.vmap`` over the seed axis, without its dispatch cost).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Literal

import torch
from torch import Tensor

Baseline = Literal["group_mean", "leave_one_out", "batch_whiten", "batch_mean", "none"]
StdScale = Literal["group", "batch"] | None
RatioLevel = Literal["token", "sequence", "sequence_exact"]
Surrogate = Literal["clip", "soft_gate", "log_prob", "is_weighted_log_prob", "geometric_mean"]
Aggregation = Literal["seq_mean_token_mean", "token_mean", "token_sum", "seq_mean_token_sum", "constant",
                      "seq_mean"]
KL = Literal["k1", "k2", "k3", "abs"] | None

BASELINES = ("group_mean", "leave_one_out", "batch_whiten", "batch_mean", "none")
STD_SCALES = ("group", "batch", None)
RATIO_LEVELS = ("token", "sequence", "sequence_exact")
SURROGATES = ("clip", "soft_gate", "log_prob", "is_weighted_log_prob", "geometric_mean")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "token_sum", "seq_mean_token_sum", "constant",
                "seq_mean")
KLS = ("k1", "k2", "k3", "abs", None)
GPG_ALPHAS = ("nonzero_reward", "nonzero_advantage", None)
SEQUENCE_MASKS = ("off_policy", None)
TOKEN_MASKS = ("trust_region", None)
GROUP_BASELINES = ("group_mean", "leave_one_out")
WHITEN_EPS = 1e-8  # verl's masked_whiten: rsqrt(var + 1e-8)


@dataclass(frozen=True)
class Objective:
    """One point in the design space of Eq. 1: advantage, ratio s, clipping, weights α and regulariser R.

    Advantages (Eq. 2), ``advantages()``:
        baseline: "group_mean" (r_i − mean of its group), "leave_one_out" (RLOO: r_i − mean of the others),
            "batch_whiten" (REINFORCE++: whiten over the batch, each completion weighted by its length when a
            mask is given), "batch_mean" (r_i − batch mean, PPO without groups) or "none".
        std_scale: divide by the "group" or "batch" std of the rewards (None: not at all), with
            ``std_correction`` (1 = Bessel) and ``std_eps`` added to σ. A tied group gives 0, never NaN.
        gpg_alpha: GPG's α̂ = N / #{...}: "nonzero_reward" (verl) or "nonzero_advantage" (the GPG paper:
            completions outside tied groups). Applied to the advantages, where the rewards are known.
        adv_threshold: CPPO's γ: completions with |A_i| ≤ γ get α = 0 (Table 1's 1{|A_i| > γ}), A_i being
            the advantage this objective computes, i.e. after the division by σ when ``std_scale`` is set
            (CPPO prunes on GRPO's σ-scaled advantage).
    Ratio s (Eq. 3):
        ratio_level: "token" π/π_old; "sequence" GSPO's exp(mean_t log π/π_old), carried to each token as
            sg[s_i]·π_θ/sg[π_θ]; "sequence_exact" GCPO's π_θ(o_i|x)/π_old(o_i|x), carried the same way.
            Either way the gradient of Σ_t α s A is Σ_t α s_i A ∇log π(y_{i,t}), not Σ_t α A ∇s_i: for GCPO's
            constant α, 1/|o_i| of the latter (``companion.methods`` says which reading is whose).
        max_log_ratio: log-ratios above this are lowered to it before exp, so s never overflows; the gradient
            passes straight through (a token beyond it gets the gradient of s = e^max_log_ratio). Below
            −max_log_ratio nothing is needed: exp underflows to 0.
    Surrogate f (the term inside the sum):
        "clip": min(s A, clip(s, 1−clip_low, 1+clip_high) A); ``dual_clip`` c bounds it below by c·A for
            A < 0; ``ratio_cap`` δ caps the unclipped s (TRL's delta). A clip bound of None is no bound.
        "soft_gate": SAPO's (4/τ) σ(τ(s−1)) A with ``sapo_temperatures`` = (τ for A > 0, τ for A ≤ 0).
        "log_prob": A log π (GPG, REINFORCE, RLOO).
        "is_weighted_log_prob": CISPO's sg[clip(s, is_weight_low, is_weight_high)] A log π.
        "geometric_mean": GMPO's A_i exp(mean_t clip_A(log s_t)), the log-ratio clipped to
            [−clip_low, clip_high] on the side that A's sign makes active; one term per completion.
    Weights α:
        aggregation: "seq_mean_token_mean" 1/(N|o_i|) (GRPO), "token_mean" 1/Σ|o_j| (DAPO, BNPO),
            "token_sum" 1, "seq_mean_token_sum" 1/N (the paper's Dr GRPO), "constant" 1/(N·L) with
            L = ``constant_length`` or the padded width T (TRL's dr_grpo), "seq_mean" 1/N per completion
            (geometric_mean only).
        sequence_mask: "off_policy" = DeepSeek-V3.2's M: drop completions with A_i < 0 whose mean
            log(π_old/π_θ) exceeds ``mask_threshold``.
        token_mask: "trust_region" = CISPO's M: drop tokens with A > 0, s > 1+clip_high or A < 0,
            s < 1−clip_low.
        gtpo: GTPO's λ_{i,t} (conflict tokens) and δ_i (entropy filter); needs ``tokens`` and ``entropies``.
    Regulariser R, coefficient ``beta`` ≥ 0:
        kl: "k1" log(π/π_ref), "k2" ½ log²(π/π_ref), "k3" π_ref/π − log(π_ref/π) − 1 (Table 1's D_KL),
            "abs" |log(π/π_ref)|; ``kl_clamped`` clamps k3 as verl does; ``kl_straight_through`` gives the
            value of ``kl`` with the gradient of k2 (verl's "+" types); ``kl_ratio_weighted`` multiplies
            the estimator by the differentiable importance weight I (GRPO v3.2's I·D_KL, TRL's bias
            correction); ``kl_aggregation`` its weights (None: the same as ``aggregation``).
        entropy_coef: GTPO's entropy term (needs ``entropies``).
    """

    name: str = "custom"
    baseline: Baseline = "group_mean"
    std_scale: StdScale = "group"
    std_correction: int = 1
    std_eps: float = 1e-4
    gpg_alpha: Literal["nonzero_reward", "nonzero_advantage"] | None = None
    adv_threshold: float | None = None
    ratio_level: RatioLevel = "token"
    max_log_ratio: float = 20.0
    surrogate: Surrogate = "clip"
    clip_low: float | None = 0.2
    clip_high: float | None = 0.2
    dual_clip: float | None = None
    ratio_cap: float | None = None
    is_weight_low: float | None = None
    is_weight_high: float | None = None
    sapo_temperatures: tuple[float, float] | None = None
    aggregation: Aggregation = "seq_mean_token_mean"
    constant_length: float | None = None
    sequence_mask: Literal["off_policy"] | None = None
    mask_threshold: float = 0.0
    token_mask: Literal["trust_region"] | None = None
    gtpo: bool = False
    gtpo_entropy_threshold: float | None = None
    kl: KL = None
    beta: float = 0.0
    kl_ratio_weighted: bool = False
    kl_clamped: bool = False
    kl_straight_through: bool = False
    kl_aggregation: Aggregation | None = None
    entropy_coef: float = 0.0
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _check_choice("baseline", self.baseline, BASELINES)
        _check_choice("std_scale", self.std_scale, STD_SCALES)
        _check_choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        _check_choice("surrogate", self.surrogate, SURROGATES)
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        _check_choice("kl_aggregation", self.kl_aggregation, (*AGGREGATIONS, None))
        _check_choice("kl", self.kl, KLS)
        _check_choice("gpg_alpha", self.gpg_alpha, GPG_ALPHAS)
        _check_choice("sequence_mask", self.sequence_mask, SEQUENCE_MASKS)
        _check_choice("token_mask", self.token_mask, TOKEN_MASKS)
        if self.std_correction not in (0, 1):
            raise ValueError(f"std_correction must be 0 (population std) or 1 (Bessel), "
                             f"got {self.std_correction!r}")
        _check_number("std_eps", self.std_eps, minimum=0.0)
        _check_number("beta", self.beta, minimum=0.0)
        _check_number("entropy_coef", self.entropy_coef, minimum=0.0)
        _check_number("max_log_ratio", self.max_log_ratio, minimum=0.0, strict=True)
        _check_number("clip_low", self.clip_low, minimum=0.0, below=1.0, optional=True)
        _check_number("clip_high", self.clip_high, minimum=0.0, optional=True)
        _check_number("dual_clip", self.dual_clip, minimum=1.0, strict=True, optional=True)
        _check_number("ratio_cap", self.ratio_cap, minimum=0.0, strict=True, optional=True)
        _check_number("is_weight_low", self.is_weight_low, minimum=0.0, optional=True)
        _check_number("is_weight_high", self.is_weight_high, minimum=0.0, strict=True, optional=True)
        _check_number("adv_threshold", self.adv_threshold, minimum=0.0, optional=True)
        _check_number("constant_length", self.constant_length, minimum=0.0, strict=True, optional=True)
        _check_number("mask_threshold", self.mask_threshold)
        _check_number("gtpo_entropy_threshold", self.gtpo_entropy_threshold, minimum=0.0, optional=True)
        if self.beta and self.kl is None:
            raise ValueError(f"beta={self.beta!r} weighs a KL estimator: set kl to one of {list(KLS[:-1])}")
        if self.surrogate == "soft_gate":
            temps = self.sapo_temperatures
            if temps is None or len(temps) != 2 or not all(_is_number(t) and t > 0 for t in temps):
                raise ValueError(f"soft_gate needs sapo_temperatures=(tau_pos, tau_neg) > 0, got {temps!r}")
        if (self.aggregation == "seq_mean") != (self.surrogate == "geometric_mean"):
            raise ValueError("aggregation='seq_mean' goes with surrogate='geometric_mean' (one term per "
                             f"completion), got aggregation={self.aggregation!r}, "
                             f"surrogate={self.surrogate!r}")
        if self.surrogate == "geometric_mean" and (self.clip_low is None or self.clip_high is None):
            raise ValueError("geometric_mean clips the log-ratio to [-clip_low, clip_high]; both must be set")
        if self.token_mask == "trust_region" and (self.clip_low is None or self.clip_high is None):
            raise ValueError("token_mask='trust_region' uses clip_low and clip_high; both must be set")
        if self.surrogate in ("log_prob", "geometric_mean") and self.ratio_level != "token":
            raise ValueError(f"surrogate={self.surrogate!r} does not use ratio_level={self.ratio_level!r}")

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Objective:
        """A named method of Table 1 or an extra (``companion.methods.PRESETS``), fields overridable."""
        from companion.methods import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
        return PRESETS[name].objective.with_(**overrides)

    @classmethod
    def from_trl(cls, **config: Any) -> Objective:
        """What TRL 1.16.0's ``GRPOTrainer`` optimises, from ``GRPOConfig`` loss fields (see trainers)."""
        from companion.trainers import objective_from_trl

        return objective_from_trl(**config)

    @classmethod
    def from_verl(cls, **config: Any) -> Objective:
        """What verl 0.9.1's actor optimises, from actor and algorithm fields (see trainers)."""
        from companion.trainers import objective_from_verl

        return objective_from_verl(**config)

    def with_(self, **overrides: Any) -> Objective:
        """A copy with some fields changed (unknown fields are a TypeError naming them)."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            valid = sorted(f.name for f in fields(self))
            raise TypeError(f"Objective has no field(s) {unknown}; valid fields: {valid}")
        return replace(self, **overrides)

    @property
    def is_group_method(self) -> bool:
        """Whether the advantage compares each completion with its own group (group_size ≥ 2 needed)."""
        return self.baseline in GROUP_BASELINES or self.std_scale == "group"

    @property
    def needs_tokens(self) -> bool:
        """GTPO finds conflict tokens from the token ids: ``loss(..., tokens=...)`` is required."""
        return self.gtpo

    @property
    def needs_entropies(self) -> bool:
        """GTPO's entropy filter and term need per-token entropies: ``loss(..., entropies=...)``."""
        return self.gtpo and (self.gtpo_entropy_threshold is not None or self.entropy_coef > 0)

    def check_inputs(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                     ref_logprobs: Tensor | None = None, *, tokens: Tensor | None = None,
                     entropies: Tensor | None = None, group_size: int | None = None,
                     batch_dims: int = 0) -> None:
        """The checks ``loss`` runs on its inputs (a clear ValueError/TypeError naming the argument)."""
        _check_loss_inputs(self, logprobs, old_logprobs, advantages, mask, ref_logprobs, tokens, entropies,
                           group_size, batch_dims=batch_dims)

    def check_rewards(self, rewards: Tensor, group_size: int, mask: Tensor | None = None, *,
                      batch_dims: int = 0) -> None:
        """The checks ``advantages`` runs on its inputs (a clear ValueError/TypeError naming the argument)."""
        _check_rewards(rewards, group_size, self.is_group_method, mask, batch_dims)

    # --- Eq. 2 -------------------------------------------------------------------------------------------
    def advantages(self, rewards: Tensor, group_size: int, mask: Tensor | None = None, *,
                   validate: bool = True, batch_dims: int = 0) -> Tensor:
        """Advantages A_i (Eq. 2) of outcome rewards (N,), groups of ``group_size`` contiguous rows.

        ``mask`` (N, T) is used only by "batch_whiten", which weighs each completion by its length as
        verl's REINFORCE++ does (without it every completion counts once). ``validate=False`` skips the
        checks on values (for callers that checked already, e.g. under ``torch.func.vmap``).
        ``batch_dims``: leading axes of independent batches (rewards (S, N) for S seeds), see the module.
        """
        if validate:
            self.check_rewards(rewards, group_size, mask, batch_dims=batch_dims)
        r = rewards
        if self.baseline == "batch_whiten":
            return _whiten(r, mask)
        n = r.shape[-1]
        groups = r.reshape(*r.shape[:-1], n // group_size, group_size)
        if self.baseline == "group_mean":
            centred = groups - groups.mean(-1, keepdim=True)
        elif self.baseline == "leave_one_out":
            centred = (groups - groups.mean(-1, keepdim=True)) * (group_size / (group_size - 1))
        elif self.baseline == "batch_mean":
            centred = groups - r.mean(-1, keepdim=True).unsqueeze(-1)
        else:
            centred = groups
        if self.std_scale == "group":
            sigma = groups.std(-1, correction=self.std_correction, keepdim=True)
            centred = _safe_divide(centred, sigma, self.std_eps)
        elif self.std_scale == "batch":
            sigma = r.std(-1, correction=self.std_correction, keepdim=True).unsqueeze(-1)
            centred = _safe_divide(centred, sigma, self.std_eps)
        adv = centred.reshape(r.shape)
        if self.gpg_alpha == "nonzero_reward":
            adv = adv * (n / (r != 0).sum(-1, keepdim=True).clamp(min=1))
        elif self.gpg_alpha == "nonzero_advantage":
            informative = (groups.std(-1, correction=0, keepdim=True) > 0).expand_as(groups).sum((-2, -1))
            adv = adv * (n / informative.unsqueeze(-1).clamp(min=1))
        return adv

    # --- Eq. 1 -------------------------------------------------------------------------------------------
    def loss(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
             ref_logprobs: Tensor | None = None, *, tokens: Tensor | None = None,
             entropies: Tensor | None = None, group_size: int | None = None,
             validate: bool = True, batch_dims: int = 0) -> LossOutput:
        """The loss −J of Eq. 1 on one batch, and its diagnostics (``LossOutput``).

        logprobs: (N, T) log π_θ of the sampled tokens, differentiable; old_logprobs: log π_old (detached);
        advantages: (N,) or (N, T); mask: (N, T) 0/1 (bool, int or float); ref_logprobs: log π_ref, needed
        when β > 0. GTPO also needs ``tokens`` (N, T) ids, ``entropies`` (N, T) and ``group_size``.
        Half-precision inputs are computed in float32. Rows without tokens contribute 0.

        validate: check shapes, dtypes and the 0/1 mask first, and a non-finite loss afterwards (a NaN or
        inf input is then named in a ValueError; a log π of −inf is a probability 0, s = 0, and is allowed
        where it gives a finite loss). ``validate=False`` skips both (for callers that ran
        ``check_inputs``, e.g. under ``torch.func.vmap``).

        batch_dims: leading axes of independent batches, e.g. 1 for (S, N, T) inputs of S seeds: the loss
        and the scalar diagnostics are then (S,), each seed's as if computed alone (see the module).
        """
        if validate:  # shapes, dtypes and the mask now; NaN/inf below, from the loss itself (cheaper)
            _check_loss_inputs(self, logprobs, old_logprobs, advantages, mask, ref_logprobs, tokens,
                               entropies, group_size, finite=False, batch_dims=batch_dims)
        dtype = torch.float32 if logprobs.dtype in (torch.float16, torch.bfloat16) else logprobs.dtype
        lp = _as(logprobs, dtype)
        old = _as(old_logprobs, dtype, detach=True)
        m = _as(mask, dtype)
        adv = _as(advantages, dtype, detach=True)
        adv = adv.unsqueeze(-1) if adv.dim() == lp.dim() - 1 else adv
        ref = None if ref_logprobs is None else _as(ref_logprobs, dtype, detach=True)
        out = LossOutput(_Context(self, lp, old, adv, m, ref, tokens, entropies, group_size,
                                  read_values=validate))
        if validate and not _all_finite(out.loss):
            _check_finite(**_finite_inputs(self, logprobs, old_logprobs, advantages, ref_logprobs))
            value = out.loss.detach().flatten()
            raise ValueError(f"the loss is {value[~torch.isfinite(value)][0].item()} although every input is "
                             "finite: an overflow (advantages or log-probabilities too large for the dtype?)")
        return out


# --- the loss, step by step ---------------------------------------------------------------------------
@dataclass
class _Context:
    """The inputs of one ``loss`` call, and the per-token terms every part of Eq. 1 shares."""

    objective: Objective
    logprobs: Tensor
    old_logprobs: Tensor
    adv: Tensor  # (N, 1) or (N, T)
    mask: Tensor
    ref_logprobs: Tensor | None
    tokens: Tensor | None
    entropies: Tensor | None
    group_size: int | None
    read_values: bool = False  # may look at values (not under vmap): skips the cap when nothing reaches it
    _lengths: Tensor | None = field(init=False, default=None)
    log_ratio: Tensor = field(init=False)  # log π/π_old per token, clamped
    seq_log_ratio: Tensor | None = field(init=False)  # (N, 1) at sequence level, else None
    s: Tensor = field(init=False)  # the ratio s_{i,t} of Eq. 3 (value s_i on every token at sequence level)
    row_weight: Tensor | float = field(init=False)  # α = mask · row_weight · token_factor
    per_row: bool = field(init=False)  # row_weight is (..., N, 1), one per completion; else one per batch
    token_factor: Tensor | None = field(init=False)  # masks, filters and GTPO's δλ (None: all 1)

    def __post_init__(self) -> None:
        obj = self.objective
        self.log_ratio = _cap(self.logprobs - self.old_logprobs, obj.max_log_ratio, self.read_values)
        self.seq_log_ratio = None
        log_s = self.log_ratio
        if obj.ratio_level != "token":
            summed = (self.log_ratio * self.mask).sum(-1, keepdim=True)
            seq = summed / self.lengths.clamp(min=1) if obj.ratio_level == "sequence" else summed
            self.seq_log_ratio = _cap(seq, obj.max_log_ratio, self.read_values)
            # value s_i on every token, gradient s_i ∇log π_t (GSPO's sg form; the same for the exact product)
            log_s = self.logprobs - self.logprobs.detach() + self.seq_log_ratio.detach()
        self.s = log_s.exp()
        self.per_row = obj.aggregation in PER_ROW_AGGREGATIONS
        self.row_weight = row_weights(obj.aggregation, self.mask, obj.constant_length,
                                      self.lengths if self.per_row else None)
        keep = _advantage_filter(self)
        if obj.sequence_mask == "off_policy":
            keep = keep * _off_policy_mask(self)
        if obj.token_mask == "trust_region":
            keep = keep * _trust_region_mask(self)
        if obj.gtpo:
            keep = keep * _gtpo_weights(self)
        self.token_factor = None if isinstance(keep, float) else keep

    @property
    def lengths(self) -> Tensor:
        """|o_i|, (N, 1) (computed on first use)."""
        if self._lengths is None:
            self._lengths = self.mask.sum(-1, keepdim=True)
        return self._lengths

    @property
    def alpha(self) -> Tensor:
        """α_{i,t} of Eq. 1 with masks and filters, (N, T)."""
        alpha = self.mask * self.row_weight
        return alpha if self.token_factor is None else alpha * self.token_factor

    def weighted_sum(self, per_token: Tensor) -> Tensor:
        """Σ_i Σ_t α_{i,t} x_{i,t}, summing each row before weighting it (cheaper than forming α)."""
        masked = per_token * (self.mask if self.token_factor is None else self.mask * self.token_factor)
        if self.per_row:
            return _batch_sum(masked.sum(-1, keepdim=True) * self.row_weight)
        weight = self.row_weight
        if isinstance(weight, Tensor):
            weight = weight.reshape(weight.shape[:-2])  # (..., 1, 1): one number per batch
        return _batch_sum(masked) * weight


class LossOutput:
    """The loss of Eq. 1 (a differentiable scalar, −J) and detached diagnostics, computed on first access.

    loss = policy_loss + regulariser (β R). Diagnostics (detached):

    - ``weights``: ω_{i,t} = α·∂f/∂log π per unit advantage where the gradient is not clipped away (Eq. 15;
      α·s for a ratio surrogate, α for log π), 0 on clipped and masked tokens;
    - ``sequence_weight``: Ω_i = Σ_t ω_{i,t} (App. A); ``alpha``: α_{i,t} with masks and filters;
    - ``ratio``: the importance ratio I = π_θ/π_old (token level, or the sequence ratio on every token);
    - ``clip_fraction_low`` / ``_high``: the fraction of loss tokens whose gradient the clip zeroes
      (A < 0 below 1−ε_low; A > 0 above 1+ε_up; for CISPO the tokens whose IS weight is clipped);
      ``clip_fraction_dual``: the same for the dual clip (A < 0, s > c); ``clipped``: those tokens, (N, T).
    """

    def __init__(self, ctx: _Context) -> None:
        self._ctx = ctx
        self.policy_loss = _policy_loss(ctx)
        has_regulariser = ctx.objective.beta > 0 or ctx.objective.entropy_coef > 0
        self._regulariser = _regulariser(ctx) if has_regulariser else None
        self.loss = self.policy_loss + self._regulariser if has_regulariser else self.policy_loss

    @property
    def regulariser(self) -> Tensor:
        """β R (zero when the objective has none)."""
        if self._regulariser is None:
            self._regulariser = self.policy_loss.new_zeros(self.policy_loss.shape)
        return self._regulariser

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v.item():.4g}" for k, v in self.scalars().items())
        return f"LossOutput({shown})"

    def scalars(self) -> dict[str, Tensor]:
        """The loss and every scalar diagnostic, by name (what the lab records per step)."""
        return {"loss": self.loss, "policy_loss": self.policy_loss.detach(),
                "regulariser": self.regulariser.detach(), "clip_fraction_low": self.clip_fraction_low,
                "clip_fraction_high": self.clip_fraction_high, "clip_fraction_dual": self.clip_fraction_dual}

    @cached_property
    def _flags(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        with torch.no_grad():
            return _clip_flags(self._ctx)

    @cached_property
    def weights(self) -> Tensor:
        with torch.no_grad():
            return _omega(self._ctx, *self._flags)

    @property
    def alpha(self) -> Tensor:
        return self._ctx.alpha.detach()

    @property
    def ratio(self) -> Tensor:
        return self._ctx.s.detach()

    @property
    def sequence_weight(self) -> Tensor:
        return self.weights.sum(-1)

    @property
    def clip_fraction_low(self) -> Tensor:
        return _token_fraction(self._flags[0], self._ctx.mask)

    @property
    def clip_fraction_high(self) -> Tensor:
        return _token_fraction(self._flags[1], self._ctx.mask)

    @property
    def clip_fraction_dual(self) -> Tensor:
        return _token_fraction(self._flags[2], self._ctx.mask)

    @property
    def clipped(self) -> Tensor:
        """(N, T) bool: the loss tokens the three clip fractions count (either side, and the dual clip)."""
        clipped = torch.zeros_like(self._ctx.mask, dtype=torch.bool)
        for flags in self._flags:
            if flags is not None:  # a surrogate without this kind of clip has None
                clipped = clipped | flags
        return clipped & (self._ctx.mask > 0)


def _clip_range(obj: Objective) -> tuple[float, float]:
    return (-math.inf if obj.clip_low is None else 1.0 - obj.clip_low,
            math.inf if obj.clip_high is None else 1.0 + obj.clip_high)


def _is_weight_range(obj: Objective) -> tuple[float, float]:
    return (0.0 if obj.is_weight_low is None else obj.is_weight_low,
            math.inf if obj.is_weight_high is None else obj.is_weight_high)


def _policy_loss(c: _Context) -> Tensor:
    """−Σ_i Σ_t α_{i,t} f(s_{i,t}, A_i): the reward part of −J."""
    obj, s, adv = c.objective, c.s, c.adv
    if obj.surrogate == "clip":
        low, high = _clip_range(obj)
        unclipped = s if obj.ratio_cap is None else s.clamp(max=obj.ratio_cap)
        f = _smaller(unclipped * adv, s.clamp(low, high) * adv)
        if obj.dual_clip is not None:
            f = torch.where(adv < 0, torch.maximum(f, obj.dual_clip * adv), f)
    elif obj.surrogate == "log_prob":
        f = adv * c.logprobs
    elif obj.surrogate == "is_weighted_log_prob":
        f = s.detach().clamp(*_is_weight_range(obj)) * adv * c.logprobs
    elif obj.surrogate == "soft_gate":
        tau = _sapo_tau(obj, adv, s.dtype)
        f = (4.0 / tau) * torch.sigmoid(tau * (s - 1.0)) * adv
    else:
        return _geometric_mean_loss(c)
    return -c.weighted_sum(f)


def _smaller(unclipped: Tensor, clipped: Tensor) -> Tensor:
    """``torch.minimum(unclipped, clipped)`` with a backward pass several times cheaper (the min of Eq. 1).

    Same value. Where the two are equal, minimum sends half the gradient to each, and inside the clip
    range both halves reach s unchanged, so their sum is the gradient this sends through the clipped term
    alone, bit for bit. Outside the range the clamp passes no gradient, so a product that rounds to a tie
    just outside it gets none here, and half from minimum. NaN propagates as in minimum, except where
    s = +inf meets A = 0 under an upper clip: the clipped term is then 0 (no advantage), not NaN.
    """
    return torch.where(unclipped < clipped, unclipped, clipped)


def _sapo_tau(obj: Objective, adv: Tensor, dtype: torch.dtype) -> Tensor:
    """SAPO's τ per token, in ``dtype`` from the start (``where`` of two Python floats would round them to
    float32 first: τ = 1.05 would become 1.0499999523 in a float64 loss)."""
    tau_pos, tau_neg = (torch.as_tensor(tau, dtype=dtype) for tau in obj.sapo_temperatures)
    return torch.where(adv > 0, tau_pos, tau_neg)


def _gmpo_clipped_log_ratio(c: _Context) -> Tensor:
    """GMPO's sign-aware clip: the log-ratio capped at clip_high for A > 0, floored at −clip_low for A < 0."""
    obj, sign = c.objective, torch.sign(c.adv)
    bounded = c.log_ratio.clamp(-obj.clip_low, obj.clip_high)
    return sign * torch.minimum(sign * c.log_ratio, sign * bounded)


def _geometric_mean_loss(c: _Context) -> Tensor:
    """GMPO: −(1/N) Σ_i Ā_i exp(mean_t clip_A(log s_t)), Ā_i the mean advantage over the completion."""
    size = c.lengths.clamp(min=1)
    seq_ratio = ((_gmpo_clipped_log_ratio(c) * c.mask).sum(-1, keepdim=True) / size).exp()
    seq_adv = (c.adv * c.mask).sum(-1, keepdim=True) / size
    return -_batch_sum(seq_adv * seq_ratio) / c.mask.shape[-2]


def _clip_flags(c: _Context) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Per token: (clipped below, clipped above, dual-clipped), None where the surrogate has no such clip."""
    obj, s, adv = c.objective, c.s.detach(), c.adv
    low = high = dual = None
    if obj.surrogate == "clip":
        lo, hi = _clip_range(obj)
        low, high = (adv < 0) & (s < lo), (adv > 0) & (s > hi)
        if obj.ratio_cap is not None:  # TRL's δ: min(s, δ) is flat above δ; for A < 0 the clip must be too
            high = high | ((adv > 0) & (s > obj.ratio_cap)) | ((adv < 0) & (s > max(obj.ratio_cap, hi)))
        if obj.dual_clip is not None:
            dual = (adv < 0) & (s > obj.dual_clip)
    elif obj.surrogate == "is_weighted_log_prob":
        lo, hi = _is_weight_range(obj)
        low, high = (s < lo).expand_as(c.mask), (s > hi).expand_as(c.mask)
    elif obj.surrogate == "geometric_mean":
        d = c.log_ratio.detach()
        low, high = (adv < 0) & (d < -obj.clip_low), (adv > 0) & (d > obj.clip_high)
    return low, high, dual


def _omega(c: _Context, low: Tensor | None, high: Tensor | None, dual: Tensor | None) -> Tensor:
    """ω_{i,t} of Eq. 15: the gradient per unit advantage, 0 on clipped and masked tokens."""
    obj, s, adv = c.objective, c.s.detach(), c.adv
    if obj.surrogate == "clip":
        clipped = low | high if dual is None else low | high | dual
        omega = c.alpha * s * ~clipped
    elif obj.surrogate == "log_prob":
        omega = c.alpha
    elif obj.surrogate == "is_weighted_log_prob":
        omega = c.alpha * s.clamp(*_is_weight_range(obj))
    elif obj.surrogate == "soft_gate":
        gate = torch.sigmoid(_sapo_tau(obj, adv, s.dtype) * (s - 1.0))
        omega = c.alpha * 4.0 * gate * (1.0 - gate) * s
    else:
        size = c.lengths.clamp(min=1)
        seq_ratio = ((_gmpo_clipped_log_ratio(c) * c.mask).sum(-1, keepdim=True) / size).exp()
        omega = seq_ratio / (c.mask.shape[-2] * size) * ~(low | high)
    return (omega * c.mask).expand_as(c.mask)


def _cap(log_ratio: Tensor, cap: float, read_values: bool = False) -> Tensor:
    """min(log_ratio, cap) in value, identity in gradient (no backward cost: verl's clamp costs a third of a
    GRPO loss's backward pass on CPU). ``read_values``: first look whether any value reaches the cap; when
    none does (the usual case) the result is ``log_ratio`` itself, the same numbers without three passes."""
    if read_values and (log_ratio.numel() == 0 or log_ratio.detach().max().item() <= cap):
        return log_ratio
    return log_ratio - (log_ratio - cap).clamp(min=0).detach()


def _as(x: Tensor, dtype: torch.dtype, detach: bool = False) -> Tensor:
    """``x.to(dtype)`` (and detached), without a call when it is already so."""
    x = x if x.dtype == dtype else x.to(dtype)
    return x.detach() if detach and x.requires_grad else x


def _all_finite(x: Tensor) -> bool:
    """No NaN or ±inf in ``x`` (one synchronisation; a scalar loss is read directly)."""
    return math.isfinite(x.item()) if x.dim() == 0 else bool(torch.isfinite(x).all())


PER_ROW_AGGREGATIONS = ("seq_mean_token_mean", "seq_mean")


def row_weights(kind: str, mask: Tensor, constant_length: float | None = None,
                lengths: Tensor | None = None) -> Tensor | float:
    """The weight of each completion's tokens under an aggregation: (..., N, 1) for the per-completion kinds,
    else one number per batch ((..., 1, 1) for DAPO's 1/Σ|o_j|, a float for the constant kinds)."""
    n, horizon = mask.shape[-2:]
    if kind in PER_ROW_AGGREGATIONS:
        lengths = mask.sum(-1, keepdim=True) if lengths is None else lengths
        return (n * lengths.clamp(min=1)).reciprocal()  # = 1.0 / x, bit for bit, without Python's __rdiv__
    if kind == "token_mean":
        return mask.sum((-2, -1), keepdim=True).clamp(min=1).reciprocal()
    if kind == "token_sum":
        return 1.0
    if kind == "seq_mean_token_sum":
        return 1.0 / n
    return 1.0 / (n * (constant_length or horizon))


def aggregation_weights(kind: str, mask: Tensor, constant_length: float | None = None,
                        lengths: Tensor | None = None) -> Tensor:
    """α_{i,t} of one aggregation (mask included): the weights that sum the per-token terms (Table 1)."""
    return mask * row_weights(kind, mask, constant_length, lengths)


def _advantage_filter(c: _Context) -> Tensor | float:
    """CPPO's 1{|A_i| > γ}: completions with small advantages leave the batch (their R terms too)."""
    if c.objective.adv_threshold is None:
        return 1.0
    return (c.adv.abs() > c.objective.adv_threshold).to(c.mask.dtype)


def _off_policy_mask(c: _Context) -> Tensor:
    """DeepSeek-V3.2's M_{i,t}: 0 on completions with A_i < 0 whose mean log(π_old/π_θ) exceeds δ."""
    mean_log_ratio = (c.log_ratio.detach() * c.mask).sum(-1, keepdim=True) / c.lengths.clamp(min=1)
    drop = (c.adv < 0) & (-mean_log_ratio > c.objective.mask_threshold)
    return (~drop).to(c.mask.dtype)


def _trust_region_mask(c: _Context) -> Tensor:
    """CISPO's M_{i,t}: 0 where PPO's clip would have zeroed the token's gradient, else 1."""
    low, high = _clip_range(c.objective)
    r = c.log_ratio.detach().exp()
    drop = ((c.adv > 0) & (r > high)) | ((c.adv < 0) & (r < low))
    return (~drop).to(c.mask.dtype)


def _regulariser(c: _Context) -> Tensor:
    """β R: a KL estimator against π_ref under its own weights, plus GTPO's entropy term."""
    obj = c.objective
    total = torch.zeros(c.mask.shape[:-2], dtype=c.logprobs.dtype, device=c.logprobs.device)
    if obj.beta:
        kl = kl_estimate(obj.kl, c.logprobs, c.ref_logprobs, clamped=obj.kl_clamped,
                         straight_through=obj.kl_straight_through)
        if obj.kl_ratio_weighted:  # I·D_KL with the differentiable weight (sequence level: TRL's w_i)
            kl = kl * (c.log_ratio if c.seq_log_ratio is None else c.seq_log_ratio).exp()
        weights = aggregation_weights(obj.kl_aggregation or obj.aggregation, c.mask, obj.constant_length,
                                      c.lengths)
        total = total + obj.beta * _batch_sum(weights * _advantage_filter(c) * kl)
    if obj.entropy_coef:
        total = total + obj.entropy_coef * _gtpo_entropy_term(c)
    return total


def kl_estimate(kind: str, logprobs: Tensor, ref_logprobs: Tensor, *, clamped: bool = False,
                straight_through: bool = False) -> Tensor:
    """Per-token estimator of KL(π_θ ‖ π_ref) from the sampled tokens (Schulman's k1, k2, k3; |k1|).

    ``clamped``: verl's low_var_kl guards (log-ratio to ±20, k3 to ±10). ``straight_through``: the value of
    ``kind`` with the gradient of k2 (verl's "+" types).
    """
    d = logprobs - ref_logprobs
    if kind == "k1":
        value = d
    elif kind == "abs":
        value = d.abs()
    elif kind == "k2":
        value = 0.5 * d**2
    elif kind == "k3":
        x = -d.clamp(-20.0, 20.0) if clamped else -d
        value = torch.expm1(x) - x
        value = value.clamp(-10.0, 10.0) if clamped else value
    else:
        raise ValueError(f"kl must be one of {KLS[:-1]}, got {kind!r}")
    if not straight_through or kind == "k2":
        return value
    k2 = 0.5 * d**2
    return k2 - k2.detach() + value.detach()


def _batch_sum(x: Tensor) -> Tensor:
    """Σ over a batch's completions and tokens (the last two axes): one value per batch."""
    return x.sum((-2, -1))


def _token_fraction(flags: Tensor | None, mask: Tensor) -> Tensor:
    """The share of the batch's loss tokens that are flagged (0 for no flags)."""
    if flags is None:
        return mask.new_zeros(mask.shape[:-2])
    return _batch_sum(flags.to(mask.dtype) * mask) / _batch_sum(mask).clamp(min=1)


def _safe_divide(centred: Tensor, sigma: Tensor, eps: float) -> Tensor:
    """centred / (σ + eps), and 0 where σ = 0 (a tied group: its centred rewards are 0 too)."""
    return torch.where(sigma > 0, centred / (sigma + eps), torch.zeros_like(centred))


def _whiten(rewards: Tensor, mask: Tensor | None) -> Tensor:
    """REINFORCE++: (r − mean) / sqrt(var + 1e-8) over the batch, completions weighted by their length
    (verl whitens token-level returns; Bessel's correction over the token count)."""
    w = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype).sum(-1)
    tokens = w.sum(-1, keepdim=True)
    centre = (w * rewards).sum(-1, keepdim=True) / tokens.clamp(min=1)
    var = (w * (rewards - centre) ** 2).sum(-1, keepdim=True) / (tokens - 1).clamp(min=1)
    return (rewards - centre) * torch.rsqrt(var + WHITEN_EPS)


# --- GTPO ------------------------------------------------------------------------------------------------
GTPO_AMPLIFY = 2.0  # λ on conflict tokens of positive completions (the authors' code, W_RAW)


def conflict_tokens(tokens: Tensor, advantages: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """GTPO's conflict tokens, (N, T) bool: token y_{i,t} also sits at position t (counted from the start)
    or at the same distance from the end in a completion of the same group whose advantage has the other
    sign, within the completion's leading (or trailing) run of such tokens: a shared prefix or suffix.
    Leading batch axes ((S, N, T) tokens) are flattened: groups never straddle them."""
    if tokens.dim() > 2:
        flat = conflict_tokens(tokens.flatten(0, -2), advantages.flatten(0, tokens.dim() - 2),
                               mask.flatten(0, -2), group_size)
        return flat.view(tokens.shape)
    adv = advantages if advantages.dim() == 1 else advantages[:, 0]
    forward = _conflict_run(tokens, adv, mask, group_size)
    lengths = mask.sum(-1).long()
    horizon = tokens.shape[1]
    back = (lengths.unsqueeze(1) - 1 - torch.arange(horizon, device=tokens.device)).clamp(min=0)
    reversed_tokens = tokens.gather(1, back)
    backward = _conflict_run(reversed_tokens, adv, mask, group_size).gather(1, back) & (mask > 0)
    return forward | backward


def _conflict_run(tokens: Tensor, adv: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """Leading run, per completion, of tokens that a completion of opposite advantage sign has at t."""
    n, horizon = tokens.shape
    groups = tokens.reshape(-1, group_size, horizon)
    valid = (mask > 0).reshape(-1, group_size, horizon)
    sign = torch.sign(adv).reshape(-1, group_size)
    same = groups.unsqueeze(2) == groups.unsqueeze(1)  # (B, i, j, T)
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    opposite = (sign.unsqueeze(2) * sign.unsqueeze(1) < 0).unsqueeze(-1)
    conflict = (same & both & opposite).any(2).reshape(n, horizon)
    return torch.cumprod(conflict.to(torch.int8), dim=1).bool()


def _gtpo_weights(c: _Context) -> Tensor:
    """δ_i λ_{i,t} of Table 1: λ = 2 on conflict tokens of positive completions, 0 on those of negative ones
    (skip the negative update), 1 elsewhere; δ_i = 1{⟨H⟩_i ≤ threshold} (no filter when it is None)."""
    obj = c.objective
    conflict = conflict_tokens(c.tokens, c.adv, c.mask, c.group_size)
    positive = c.adv > 0
    lam = torch.where(conflict, torch.where(positive, GTPO_AMPLIFY, 0.0), 1.0).to(c.mask.dtype)
    if obj.gtpo_entropy_threshold is None:
        return lam
    return lam * (_mean_entropy(c) <= obj.gtpo_entropy_threshold).to(c.mask.dtype)


def _mean_entropy(c: _Context) -> Tensor:
    """⟨H⟩_i: the completion's mean per-token entropy, (N, 1), detached."""
    return (c.entropies.detach().to(c.mask.dtype) * c.mask).sum(-1, keepdim=True) / c.lengths.clamp(min=1)


def _gtpo_entropy_term(c: _Context) -> Tensor:
    """GTPO's R = (1/G) Σ_i δ_i ⟨H⟩_i/|o_i| Σ_t I λ_{i,t} (Table 1): Σ α ⟨H⟩_i I with α = δ λ/(G|o_i|)."""
    return c.weighted_sum(_mean_entropy(c) * c.log_ratio.exp())


# --- input checks ----------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _check_number(name: str, value: Any, *, minimum: float | None = None, below: float | None = None,
                  strict: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value!r}")


def _check_float_tensor(name: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _finite_by_sum(tensors: Iterable[Tensor]) -> bool:
    """True when the sum of every entry of ``tensors`` is finite, which proves every entry finite (NaN and
    ±inf propagate through a sum): one reduction per tensor and one synchronisation, far cheaper on CPU
    than ``isfinite().all()``. False proves nothing (finite entries can overflow their sum): look closer."""
    return bool(torch.isfinite(sum(x.sum() for x in tensors)))


def _check_finite(**tensors: Tensor) -> None:
    """NaN or ±inf in any of ``tensors`` is a ValueError naming it (the exact test only where
    :func:`_finite_by_sum` cannot vouch for them)."""
    if _finite_by_sum(tensors.values()):
        return
    for name, x in tensors.items():
        bad = (~torch.isfinite(x)).nonzero()
        if len(bad):
            index = bad[0].tolist()
            raise ValueError(f"{name} has a non-finite value ({x[tuple(index)].item()}) at index {index}; "
                             "pad masked positions with 0, not -inf")


def _is_zero_one(mask: Tensor) -> bool:
    """Every value is 0 or 1: x(x − 1) is 0 there and only there, in floating point too (x − 1 is exact near
    1, and a product of two nonzero factors this size is never below the smallest subnormal), while NaN and
    ±inf give NaN or inf; so its smallest and largest values decide it (both 0), in one reduction."""
    x = mask if mask.dtype in (torch.float32, torch.float64) else mask.float()
    low, high = torch.aminmax((x - 1).mul_(x))
    return low.item() == 0 and high.item() == 0


def _check_rewards(rewards: Tensor, group_size: int, group_method: bool, mask: Tensor | None,
                   batch_dims: int) -> None:
    _check_float_tensor("rewards", rewards)
    if rewards.dim() != 1 + batch_dims:
        expected = "1-D (N,)" if batch_dims == 0 else f"(..., N) with {batch_dims} batch dim(s)"
        raise ValueError(f"rewards must be {expected}, got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {group_size!r}")
    n = rewards.shape[-1]
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size} must divide the number of completions N={n}")
    if group_method and group_size < 2:
        raise ValueError("group_size must be >= 2 for a group method: the advantage compares each completion "
                         "with the rest of its group (Eq. 2)")
    _check_finite(rewards=rewards)
    if mask is not None and (mask.dim() != rewards.dim() + 1 or mask.shape[:-1] != rewards.shape):
        raise ValueError(f"mask must be (..., N={n}, T) like the rewards, got shape {tuple(mask.shape)}")


def _finite_inputs(obj: Objective, logprobs: Tensor, old: Tensor, adv: Tensor,
                   ref: Tensor | None) -> dict[str, Tensor]:
    extra = {"ref_logprobs": ref} if obj.beta and obj.kl is not None and ref is not None else {}
    return dict(logprobs=logprobs.detach(), old_logprobs=old, advantages=adv, **extra)


def _check_loss_inputs(obj: Objective, logprobs: Tensor, old: Tensor, adv: Tensor, mask: Tensor,
                       ref: Tensor | None, tokens: Tensor | None, entropies: Tensor | None,
                       group_size: int | None, finite: bool = True, batch_dims: int = 0) -> None:
    for name, x in (("logprobs", logprobs), ("old_logprobs", old), ("advantages", adv)):
        _check_float_tensor(name, x)
    if logprobs.dim() != 2 + batch_dims:
        expected = "(N, T)" if batch_dims == 0 else f"(..., N, T) with {batch_dims} batch dim(s)"
        raise ValueError(f"logprobs must be {expected}, got shape {tuple(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    if tuple(old.shape) != shape:
        raise ValueError(f"old_logprobs has shape {tuple(old.shape)}, logprobs {shape}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of the shape of logprobs {shape}, got {got}")
    if tuple(adv.shape) not in (shape[:-1], shape):
        raise ValueError(f"advantages must be (N,) or (N, T) = {shape[:-1]} or {shape}, "
                         f"got {tuple(adv.shape)}")
    if mask.dtype != torch.bool and not _is_zero_one(mask):
        raise ValueError("mask must hold only 0 and 1")
    if obj.beta and obj.kl is not None:
        if ref is None:
            raise ValueError(f"ref_logprobs is needed: beta={obj.beta} weighs a KL to the reference policy")
        _check_float_tensor("ref_logprobs", ref)
        if tuple(ref.shape) != shape:
            raise ValueError(f"ref_logprobs has shape {tuple(ref.shape)}, logprobs {shape}")
    if finite:
        _check_finite(**_finite_inputs(obj, logprobs, old, adv, ref))
    if obj.needs_tokens:
        if tokens is None or tuple(tokens.shape) != shape:
            raise ValueError(f"{obj.name}: GTPO needs tokens=(N, T) token ids to find conflict tokens")
        if group_size is None or group_size < 2 or shape[-2] % group_size:
            raise ValueError(f"{obj.name}: GTPO needs group_size (>= 2, dividing N={shape[-2]}) to compare "
                             f"completions within a group, got {group_size!r}")
    if obj.needs_entropies:
        if entropies is None or tuple(entropies.shape) != shape:
            raise ValueError(f"{obj.name}: GTPO's entropy filter needs entropies=(N, T)")
        _check_finite(entropies=entropies)
