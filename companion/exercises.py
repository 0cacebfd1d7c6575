"""Self-checking exercises: ``check_*`` functions tell the learner pass or fail, and give a hint.

Every check returns a :class:`Check`. In a notebook it shows itself as one friendly line (✅ / ❌ plus
the hint); in code, ``bool(check)`` and ``check.passed`` say whether it passed. A check never raises on
a wrong answer (the learner is meant to try again); it raises only when it is called wrongly.

Chapters add specific checks built on :func:`check_close`, e.g.::

    def check_group_advantages(answer):
        return check_close("advantages of r=[1, 0, 0, 1]", answer, [0.5, -0.5, -0.5, 0.5],
                           hint="Subtract the group mean (Eq. 2); the std is folded into alpha.")
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any


@dataclass(frozen=True)
class Check:
    """The outcome of one exercise check."""

    name: str
    passed: bool
    message: str
    hint: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "✅ passed" if self.passed else "❌ not yet"
        text = f"{mark}: {self.name}. {self.message}"
        if not self.passed and self.hint:
            text += f"\nHint: {self.hint}"
        return text

    def _repr_html_(self) -> str:
        mark = "✅ passed" if self.passed else "❌ not yet"  # the mark and the words, not a colour, carry it
        body = f"<b>{mark}</b>: {html.escape(self.name)}. {html.escape(self.message)}"
        if not self.passed and self.hint:
            body += f"<br/><i>Hint:</i> {html.escape(self.hint)}"
        return f"<div class='companion-check'>{body}</div>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def _as_float_list(name: str, value: Any) -> list[float]:
    """Flatten a number, a sequence, a numpy array or a torch tensor into floats."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist"):  # numpy array or scalar
        value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        raise TypeError(f"{name}: expected a number or a sequence of numbers, got {type(value).__name__}")
    if isinstance(value, Real):
        return [float(value)]
    if isinstance(value, Sequence):
        flat: list[float] = []
        for item in value:
            flat.extend(_as_float_list(name, item))
        return flat
    raise TypeError(f"{name}: expected a number or a sequence of numbers, got {type(value).__name__}")


def check_close(
    name: str,
    value: Any,
    expected: Any,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    hint: str = "",
) -> Check:
    """Pass when ``value`` equals ``expected`` element-wise within ``atol + rtol·|expected|``.

    ``value`` may be the learner's number, list, numpy array or torch tensor. ``None`` (an exercise left
    blank), a wrong shape, or a NaN fails with a message saying so.
    """
    if rtol < 0 or atol < 0:
        raise ValueError(f"check_close: rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    target = _as_float_list("expected", expected)
    if value is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    try:
        answer = _as_float_list("value", value)
    except TypeError as error:
        return Check(name, False, str(error), hint)
    if len(answer) != len(target):
        return Check(name, False, f"Expected {len(target)} number(s), got {len(answer)}.", hint)
    for i, (a, e) in enumerate(zip(answer, target, strict=True)):
        if math.isnan(a) or abs(a - e) > atol + rtol * abs(e):
            where = f" at position {i}" if len(target) > 1 else ""
            return Check(name, False, f"Got {a:.6g}{where}, expected {e:.6g}.", hint)
    shown = f"{target[0]:.6g}" if len(target) == 1 else f"all {len(target)} values"
    return Check(name, True, f"Matches {shown}.", hint)


def check_true(name: str, condition: bool, message_if_false: str, *, hint: str = "") -> Check:
    """Pass when ``condition`` holds; for answers that are claims rather than numbers."""
    if not isinstance(condition, bool):
        raise TypeError(f"check_true: condition must be a bool, got {type(condition).__name__}")
    return Check(name, condition, "Correct." if condition else message_if_false, hint)


def name_the_mistake(result: Check, answer: Any, mistakes: Sequence[tuple[str, Any, str]], *,
                     rtol: float = 1e-5, atol: float = 1e-6) -> Check:
    """A failed :func:`check_close` result whose message names the known mistake the answer matches.

    ``mistakes``: (label, values, hint) triples, tried in order (``values`` None skips one); a match
    replaces the hint. A passing result, or an answer that matches none, is returned unchanged.
    """
    if result.passed or answer is None:
        return result
    try:
        got = _as_float_list("value", answer)
    except TypeError:
        return result
    for label, values, hint in mistakes:
        if values is None:
            continue
        target = _as_float_list("mistake", values)
        if len(target) == len(got) and all(abs(a - b) <= atol + rtol * abs(b)
                                           for a, b in zip(got, target, strict=True)):
            return Check(result.name, False, f"{result.message} Your answer is {label}.", hint)
    return result


# --- Chapter 2 ---
# One objective, ten methods: the weights alpha of Table 1, the sequence weight Omega_i, and reading a
# trainer's configuration in Eq. 1 terms.

CH02_WEIGHTINGS = ("grpo", "dr_grpo", "dapo")
CH02_OMEGA_CANDIDATES = ("grpo_r1", "gspo", "dapo", "dr_grpo", "gpg", "cispo", "gcpo")
CH02_LIBRARIES = ("trl", "verl")

_CH02_WEIGHT_HINTS = {
    "grpo": "GRPO averages over the tokens of each completion, then over the G completions.",
    "dr_grpo": "Dr GRPO sums over the tokens of each completion, then averages over the G completions.",
    "dapo": "DAPO takes one average over every token of the group at once.",
}


def _positive_lengths(lengths: Any) -> list[int]:
    values = _as_float_list("lengths", lengths)
    if not values or any(v < 1 or v != int(v) for v in values):
        raise ValueError(f"lengths must be positive whole numbers (token counts), got {lengths!r}")
    return [int(v) for v in values]


def check_token_weights(method: str, lengths: Any, answer: Any) -> Check:
    """Chapter 2: α_{i,t} of each completion of one group of G = len(lengths) completions (σ(r) folded
    into the advantage, as ``companion`` does), for ``method`` "grpo" (1/(G|o_i|)), "dr_grpo" (1/G) or
    "dapo" (1/Σ_j |o_j|). ``answer``: one number per completion."""
    if method not in CH02_WEIGHTINGS:
        raise ValueError(f"method must be one of {CH02_WEIGHTINGS}, got {method!r}")
    sizes = _positive_lengths(lengths)
    n, total = len(sizes), sum(sizes)
    expected = {"grpo": [1.0 / (n * size) for size in sizes], "dr_grpo": [1.0 / n] * n,
                "dapo": [1.0 / total] * n}[method]
    return check_close(f"α_(i,t) of {method} for |o| = {tuple(sizes)}", answer, expected,
                       hint=_CH02_WEIGHT_HINTS[method])


def _ch02_batch(seed: int, group_size: int = 4, groups: int = 2, horizon: int = 6) -> dict[str, Any]:
    """A ragged fp64 batch with mixed rewards in every group (no tied group), ratios within 0.95..1.05."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = group_size * groups
    lengths = torch.randint(1, horizon + 1, (n,), generator=g)
    lengths[0], lengths[1] = 1, horizon  # a short and a long completion, always
    mask = (torch.arange(horizon) < lengths.unsqueeze(1)).to(torch.float64)
    rewards = torch.rand(n, generator=g, dtype=torch.float64).round(decimals=1)
    rewards[::group_size], rewards[1::group_size] = 1.0, 0.0  # every group has a spread
    old = (-0.2 - 1.5 * torch.rand(n, horizon, generator=g, dtype=torch.float64)) * mask
    logprobs = (old + 0.02 * torch.randn(n, horizon, generator=g, dtype=torch.float64)) * mask
    ref = (old + 0.1 * torch.randn(n, horizon, generator=g, dtype=torch.float64)) * mask
    return dict(rewards=rewards, mask=mask, old=old, logprobs=logprobs, ref=ref, group_size=group_size)


def constant_omega_presets(candidates: Sequence[str] = CH02_OMEGA_CANDIDATES,
                           seeds: Sequence[int] = (0, 1, 2)) -> tuple[str, ...]:
    """The presets whose Ω_i = Σ_t ω_{i,t} is the same for every completion at θ = θ_old (s = 1), measured
    on ragged random batches (one per seed): the expected answer of :func:`check_constant_omega`."""
    from companion.objective import Objective

    constant = []
    for name in candidates:
        objective = Objective.preset(name)
        same = True
        for seed in seeds:
            b = _ch02_batch(seed)
            adv = objective.advantages(b["rewards"], b["group_size"])
            out = objective.loss(b["old"], b["old"], adv, b["mask"], ref_logprobs=b["ref"])
            omega = out.sequence_weight
            same = same and bool((omega.max() - omega.min()).abs() <= 1e-12 * omega.abs().max())
        if same:
            constant.append(name)
    return tuple(constant)


def check_constant_omega(answer: Any) -> Check:
    """Chapter 2: which presets of ``CH02_OMEGA_CANDIDATES`` give every completion the same total weight
    Ω_i = Σ_t ω_{i,t} at the first inner step, whatever the lengths? ``answer``: a collection of names."""
    name = "presets with a constant Ω_i at θ = θ_old"
    hint = ("At the first inner step s = 1, so Ω_i = Σ_t α_{i,t}: sum each preset's α over a completion of "
            "2 tokens and one of 10. A sequence-level ratio is 1 too.")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    if isinstance(answer, str):
        answer = [answer]
    try:
        chosen = {str(item) for item in answer}
    except TypeError:
        got = type(answer).__name__
        return Check(name, False, f"Expected a collection of preset names, got {got}.", hint)
    unknown = sorted(chosen - set(CH02_OMEGA_CANDIDATES))
    if unknown:
        return Check(name, False, f"Not among the candidates {list(CH02_OMEGA_CANDIDATES)}: {unknown}.", hint)
    expected = set(constant_omega_presets())
    if chosen == expected:
        return Check(name, True, f"Exactly {sorted(expected)}.", hint)
    parts = []
    if expected - chosen:
        parts.append(f"also constant: {sorted(expected - chosen)}")
    if chosen - expected:
        parts.append(f"not constant: {sorted(chosen - expected)}")
    return Check(name, False, "; ".join(parts).capitalize() + ".", hint)


def _ch02_effective(objective: Any) -> dict[str, Any]:
    """The Objective's fields that the loss uses, with defaults that cannot matter dropped."""
    from dataclasses import fields

    values = {f.name: getattr(objective, f.name) for f in fields(objective) if f.compare and f.name != "name"}
    values["kl_aggregation"] = values["kl_aggregation"] or values["aggregation"]
    if not values["beta"]:
        for key in ("kl", "kl_ratio_weighted", "kl_clamped", "kl_straight_through", "kl_aggregation"):
            values.pop(key)
    if values["std_scale"] is None:
        values.pop("std_eps")
        values.pop("std_correction")
    return values


def _ch02_config_hint(read: dict[str, Any], target: dict[str, Any]) -> str:
    differing = sorted(k for k in set(read) | set(target) if read.get(k) != target.get(k))
    if any(k in differing for k in ("std_scale", "baseline", "std_eps")):
        return ("Compare the advantages first: the target divides by the group's σ(r) or not (TRL: "
                "scale_rewards; verl: norm_adv_by_std_in_grpo).")
    if any(k in differing for k in ("aggregation", "constant_length")):
        return ("Compare α: which normaliser gives the target's weights (TRL: loss_type and "
                "max_completion_length; verl: loss_agg_mode)?")
    if any(k.startswith("kl") or k == "beta" for k in differing):
        return ("Compare R: the target's β and estimator (TRL: beta, use_bias_correction_kl; verl: "
                "use_kl_loss, kl_loss_coef, kl_loss_type).")
    return f"The reading still differs in: {differing}." if differing else ""


def check_trainer_config(library: str, config: Any, preset: str = "dr_grpo", **overrides: Any) -> Check:
    """Chapter 2: does this TRL 1.16.0 (``library="trl"``, ``GRPOConfig`` fields) or verl 0.9.1 (``"verl"``,
    actor and algorithm fields) configuration compute the preset's objective (fields overridable)? Passes
    when the advantages, the loss and its gradient agree to 1e-9 in fp64 on ragged batches whose ratios stay
    inside every clip range."""
    import torch

    from companion.objective import Objective

    if library not in CH02_LIBRARIES:
        raise ValueError(f"library must be one of {CH02_LIBRARIES}, got {library!r}")
    target = Objective.preset(preset, **overrides)
    name = f"{library} configuration read as {target.name}"
    if config is None:
        return Check(name, False, "No answer yet (the value is None).",
                     "Start from the trainer's defaults and change one field at a time.")
    if not isinstance(config, Mapping):
        return Check(name, False, f"Expected a dict of configuration fields, got {type(config).__name__}.")
    try:
        read = (Objective.from_trl if library == "trl" else Objective.from_verl)(**config)
    except (TypeError, ValueError) as error:
        return Check(name, False, f"The configuration is not valid: {error}",
                     "Use the field names of TRL's GRPOConfig or verl's actor and algorithm configs.")
    hint = _ch02_config_hint(_ch02_effective(read), _ch02_effective(target))
    for seed in (0, 1):
        b = _ch02_batch(seed)
        results = []
        for objective in (read, target):
            logprobs = b["logprobs"].clone().requires_grad_(True)
            adv = objective.advantages(b["rewards"], b["group_size"], b["mask"])
            out = objective.loss(logprobs, b["old"], adv, b["mask"], ref_logprobs=b["ref"])
            (gradient,) = torch.autograd.grad(out.loss, logprobs)
            results.append((adv, out.loss.detach(), gradient))
        (adv_a, loss_a, grad_a), (adv_b, loss_b, grad_b) = results
        if not torch.allclose(adv_a, adv_b, rtol=1e-9, atol=1e-12):
            return Check(name, False, "The advantages differ from the target's.", hint)
        if not torch.allclose(grad_a, grad_b, rtol=1e-9, atol=1e-12):
            scale = float(grad_b.norm() / grad_a.norm().clamp(min=1e-300))
            return Check(name, False, f"The gradients differ (norm ratio target/yours = {scale:.4g}).", hint)
        if not torch.allclose(loss_a, loss_b, rtol=1e-9, atol=1e-12):
            return Check(name, False, f"Same gradient, but the loss is {loss_a.item():.6g}, not "
                                      f"{loss_b.item():.6g}.", hint)
    return Check(name, True, "Same advantages, loss and gradient.", hint)


# --- Chapter 1 ---
# Group-based RL in one sitting: the group baseline of Eq. 2 (and RLOO's leave-one-out), and which tokens
# PPO's clip silences. Pure Python, so the expected values never depend on the code the learner is testing.

CH01_BASELINES = ("group_mean", "leave_one_out")


def _ch01_groups(rewards: Any, group_size: int) -> list[list[float]]:
    values = _as_float_list("rewards", rewards)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}")
    if not values or len(values) % group_size:
        raise ValueError(f"group_size={group_size} must divide the number of rewards ({len(values)})")
    return [values[k:k + group_size] for k in range(0, len(values), group_size)]


def group_advantages_reference(rewards: Any, group_size: int, *, baseline: str = "group_mean",
                               std: bool = False, std_correction: int = 1, std_eps: float = 1e-4,
                               batch: bool = False) -> list[float]:
    """Advantages of ``rewards`` (groups of ``group_size`` contiguous values) as ``cp.Objective`` computes
    them: r_i minus the mean of its group (Eq. 2), or minus the mean of the *other* completions of its
    group (``baseline="leave_one_out"``, RLOO: G/(G−1) times Eq. 2); with ``std`` divided by the group's
    standard deviation (``std_correction`` 1 = Bessel) plus ``std_eps``, and 0 in a tied group.
    ``batch=True`` uses the whole batch as one group (PPO's batch mean; for the diagnoses)."""
    if baseline not in CH01_BASELINES:
        raise ValueError(f"baseline must be one of {CH01_BASELINES}, got {baseline!r}")
    groups = _ch01_groups(rewards, group_size)
    if batch:
        groups = [[r for g in groups for r in g]]
    out: list[float] = []
    for g in groups:
        mean = sum(g) / len(g)
        centred = [r - mean for r in g]
        if std:
            sigma = math.sqrt(sum(c * c for c in centred) / (len(g) - std_correction))
        if baseline == "leave_one_out":
            centred = [c * len(g) / (len(g) - 1) for c in centred]
        if std:
            centred = [c / (sigma + std_eps) if sigma > 0 else 0.0 for c in centred]
        out.extend(centred)
    return out


def _ch01_matches(values: list[float], target: list[float]) -> bool:
    return all(abs(a - b) <= 1e-6 + 1e-5 * abs(b) for a, b in zip(values, target, strict=True))


def check_group_advantages(answer: Any, rewards: Any, group_size: int, *, baseline: str = "group_mean",
                           std: bool = False) -> Check:
    """Chapter 1: the learner's advantages for ``rewards`` (groups of ``group_size``, contiguous).

    ``baseline="group_mean"``: Eq. 2, A_i = r_i − mean of its group; ``"leave_one_out"``: RLOO's
    A_i = r_i − mean of the other G − 1 completions of its group. ``std=True`` also divides by the group's
    σ (Bessel's correction, + 1e-4; 0 for a tied group), as ``cp.Objective(std_scale="group")`` does.
    A wrong answer that matches a common mistake (the batch mean, the other baseline, σ missing or
    extra, population σ, the sign) is named in the message.
    """
    expected = group_advantages_reference(rewards, group_size, baseline=baseline, std=std)
    what = "r_i − mean of its group (Eq. 2)" if baseline == "group_mean" else \
        "r_i − mean of the other G − 1 completions of its group (leave-one-out)"
    name = f"advantages {what}" + (", divided by the group's σ" if std else "")
    hint = ("View the rewards as a (groups, G) matrix, e.g. rewards.view(-1, G), and work on each row."
            if baseline == "group_mean" else
            "The mean of the others is (sum of the group − r_i) / (G − 1).")
    result = check_close(name, answer, expected, rtol=1e-5, atol=1e-6, hint=hint)
    other = "leave_one_out" if baseline == "group_mean" else "group_mean"
    mistakes = [
        ("r_i minus the mean of the whole batch (PPO's baseline), not of each group",
         group_advantages_reference(rewards, group_size, baseline=baseline, std=std, batch=True),
         "Each group needs its own mean: reshape to (groups, G) and average over dim=1 with keepdim=True."),
        ("the " + ("leave-one-out advantages" if other == "leave_one_out" else "plain group-mean advantages"),
         group_advantages_reference(rewards, group_size, baseline=other, std=std),
         "Leave-one-out excludes r_i from its own baseline; the group mean (Eq. 2) includes it."),
        ("the advantages " + ("without" if std else "divided by") + " the group's σ",
         group_advantages_reference(rewards, group_size, baseline=baseline, std=not std),
         "Divide by σ only when asked (std=True); a tied group has σ = 0 and gets A = 0."),
        ("divided by the population σ (dividing by G, not G − 1)",
         group_advantages_reference(rewards, group_size, baseline=baseline, std=True, std_correction=0)
         if std else None,
         "companion uses Bessel's correction: σ² = Σ (r − mean)² / (G − 1), as torch.std does by default."),
        ("the advantages with the sign flipped", [-a for a in expected], "A_i is r_i minus the baseline."),
        ("the raw rewards", rewards, "Subtract the baseline from each reward."),
    ]
    return name_the_mistake(result, answer, mistakes)


def _as_flags(value: Any) -> list[bool]:
    """Flatten bools, 0/1 numbers, numpy arrays or torch tensors into a list of bools."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bool | int | float):
        if value not in (0, 1):
            raise TypeError(f"expected True/False (or 1/0), got {value!r}")
        return [bool(value)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [flag for item in value for flag in _as_flags(item)]
    raise TypeError(f"expected booleans, got {type(value).__name__}")


def check_clipped_tokens(answer: Any, ratios: Any, advantages: Any, *, clip_low: float = 0.2,
                         clip_high: float = 0.2) -> Check:
    """Chapter 1: which tokens does PPO's clip silence? ``answer``: one boolean per token, True where the
    clipped surrogate min(s A, clip(s, 1 − ε_low, 1 + ε_up) A) has zero gradient: A > 0 and s > 1 + ε_up,
    or A < 0 and s < 1 − ε_low (companion's ``clip_fraction_high`` / ``_low``)."""
    s = _as_float_list("ratios", ratios)
    a = _as_float_list("advantages", advantages)
    if len(s) != len(a):
        raise ValueError(f"ratios and advantages differ in length: {len(s)} and {len(a)}")
    if any(not x > 0 for x in s):
        raise ValueError("ratios must be > 0 (s = π_θ / π_old)")
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    low, high = 1.0 - clip_low, 1.0 + clip_high
    expected = [(ai > 0 and si > high) or (ai < 0 and si < low) for si, ai in zip(s, a, strict=True)]
    name = f"tokens clipped with ε_low = {clip_low:g}, ε_up = {clip_high:g}"
    hint = (f"The clip is one-sided: a token is clipped when it has moved past the range in the direction "
            f"its advantage asks for (A > 0 and s > {high:g}, or A < 0 and s < {low:g}).")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    try:
        flags = _as_flags(answer)
    except TypeError as error:
        return Check(name, False, str(error), hint)
    if len(flags) != len(expected):
        message = f"Expected {len(expected)} booleans, one per token, got {len(flags)}."
        return Check(name, False, message, hint)
    if flags == expected:
        return Check(name, True, f"{sum(expected)} of {len(expected)} tokens are clipped.", hint)
    outside = [si > high or si < low for si in s]
    if flags == outside and outside != expected:
        return Check(name, False, "You marked every token outside the range. A token outside it on the side "
                                  "that pulls it back keeps its gradient.", hint)
    wrong = [i for i, (f, e) in enumerate(zip(flags, expected, strict=True)) if f != e]
    return Check(name, False, f"Token(s) {wrong} are wrong.", hint)


def check_tied_probability(answer: Any, p: float, group_size: int) -> Check:
    """Chapter 1: the probability that a group of ``group_size`` independent completions, each correct with
    probability ``p`` (binary reward), is tied: all right or all wrong, p^G + (1 − p)^G."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    all_right, all_wrong = p**group_size, (1.0 - p) ** group_size
    name = f"P(tied group) for p = {p:g}, G = {group_size}"
    hint = "A binary group is tied when all G completions are wrong or all G are right; they are independent."
    result = check_close(name, answer, all_right + all_wrong, rtol=1e-6, atol=1e-12, hint=hint)
    mistakes = [("only the all-wrong groups", all_wrong, "Add the groups in which all G are right."),
                ("only the all-right groups", all_right, "Add the groups in which all G are wrong."),
                ("the probability that a group is NOT tied (it carries signal)", 1.0 - all_right - all_wrong,
                 "That is the complement: 1 minus your answer.")]
    return name_the_mistake(result, answer, mistakes, rtol=1e-6, atol=1e-18)


# --- chapter 4 ---
# Reward scale and AdamW (Prop. 2, Props. 5-6, Eq. 27): the smallest safe reward scale for a given ε, which
# training set-ups are scale-invariant (measured, not listed), and the β that keeps a KL term in balance.

CH04_SETUPS: dict[str, str] = {
    "dr_grpo_adamw": "Dr GRPO (β = 0), AdamW with decoupled weight decay 0.01",
    "dr_grpo_adam_l2": "Dr GRPO (β = 0), Adam with weight_decay = 0.01 (L2 added to the gradient)",
    "dr_grpo_adamw_kl": "Dr GRPO (β = 0.04 whatever φ), AdamW",
    "dr_grpo_adamw_kl_scaled": "Dr GRPO with β = 0.04·φ, AdamW",
    "dr_grpo_adamw_clip": "Dr GRPO (β = 0), gradient-norm clipping at 1.0, then AdamW",
    "dr_grpo_sgd": "Dr GRPO (β = 0), SGD",
    "grpo_sgd": "GRPO (R1) with its KL term (β = 0.04) and σ(r) without stabiliser (std_eps = 0), SGD",
}
CH04_SCALES = (2.0**-8, 2.0**8)


def _ch04_setup(setup: str, phi: float) -> tuple[Any, Any]:
    """The objective and the optimizer factory of one of ``CH04_SETUPS`` at reward scale φ."""
    import torch

    from companion.objective import Objective

    tiny = torch.finfo(torch.float64).tiny  # ε far below every √v̂, and no 0/0 on unvisited nodes

    def adamw(params: Any) -> Any:
        return torch.optim.AdamW(params, lr=0.1, eps=tiny, weight_decay=0.01)

    def clipped_adamw(params: Any) -> Any:
        class ClippedAdamW(torch.optim.AdamW):
            def step(self, closure: Any = None) -> Any:
                torch.nn.utils.clip_grad_norm_(self.param_groups[0]["params"], max_norm=1.0)
                return super().step(closure)

        return ClippedAdamW(params, lr=0.1, eps=tiny, weight_decay=0.01)

    dr_grpo = Objective.preset("dr_grpo", beta=0.0)
    setups = {
        "dr_grpo_adamw": (dr_grpo, adamw),
        "dr_grpo_adam_l2": (dr_grpo, lambda p: torch.optim.Adam(p, lr=0.1, eps=tiny, weight_decay=0.01)),
        "dr_grpo_adamw_kl": (Objective.preset("dr_grpo", beta=0.04), adamw),
        "dr_grpo_adamw_kl_scaled": (Objective.preset("dr_grpo", beta=0.04 * phi), adamw),
        "dr_grpo_adamw_clip": (dr_grpo, clipped_adamw),
        "dr_grpo_sgd": (dr_grpo, lambda p: torch.optim.SGD(p, lr=1.0)),
        "grpo_sgd": (Objective.preset("grpo_r1", std_eps=0.0), lambda p: torch.optim.SGD(p, lr=1.0)),
    }
    return setups[setup]


def _ch04_parameters_after_training(setup: str, phi: float) -> Any:
    """The parameters after 4 on-policy steps (fp64 tabular policy, one seed) with rewards scaled by φ."""
    import torch

    from companion.lab import train
    from companion.policies import TabularPolicy
    from companion.tasks import make_task

    task = make_task("pick", reward_scale=phi)
    policy = TabularPolicy.for_task(task, init_scale=0.3, seed=0, dtype=torch.float64)
    objective, make_optimizer = _ch04_setup(setup, phi)
    train(policy, task, objective, optimizer=make_optimizer, steps=4, group_size=4, prompts_per_step=2,
          device="cpu", progress=False)
    return policy.logits.detach()


def scale_invariant(setup: str) -> bool:
    """Measured: do the parameters stay bit-identical (``torch.equal``) to the run at φ = 1 when the rewards
    are scaled by φ = 2^-8 and 2^8? (Powers of two scale every float exactly, so an invariant set-up gives
    the very same bits and any other difference is real.) The expected answer of
    :func:`check_scale_invariance`."""
    import torch

    if setup not in CH04_SETUPS:
        raise ValueError(f"setup must be one of {sorted(CH04_SETUPS)}, got {setup!r}")
    reference = _ch04_parameters_after_training(setup, 1.0)
    return all(torch.equal(_ch04_parameters_after_training(setup, phi), reference) for phi in CH04_SCALES)


def check_scale_invariance(answer: Any) -> Check:
    """Chapter 4: for each set-up of ``CH04_SETUPS``, is training invariant to the reward scale φ? ``answer``:
    a dict {setup: True/False}. The checker trains each set-up at φ = 1, 2^-8 and 2^8 and compares the
    parameters bit for bit (:func:`scale_invariant`)."""
    name = "which set-ups are invariant to the reward scale"
    hint = ("Scale the rewards by φ and follow the gradient through: which terms of the update scale with φ "
            "(the advantage part, Eq. 23), which do not (a KL term, an L2 term inside the gradient, a fixed "
            "clipping threshold), and what the optimizer does with a common factor (Eq. 27).")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    if not isinstance(answer, Mapping):
        got = type(answer).__name__
        return Check(name, False, f"Expected a dict {{setup: True/False}}, got {got}.", hint)
    missing, unknown = sorted(set(CH04_SETUPS) - set(answer)), sorted(set(answer) - set(CH04_SETUPS))
    if missing or unknown:
        parts = ([f"missing: {missing}"] if missing else []) + ([f"unknown: {unknown}"] if unknown else [])
        return Check(name, False, "; ".join(parts).capitalize() + ".", hint)
    if not all(isinstance(value, bool) for value in answer.values()):
        return Check(name, False, "Answer each set-up with True or False.", hint)
    wrong = [setup for setup in CH04_SETUPS if answer[setup] != scale_invariant(setup)]
    if not wrong:
        return Check(name, True, f"All {len(CH04_SETUPS)} verdicts match the measurement.", hint)
    return Check(name, False, f"The measurement disagrees on {wrong}.", hint)


def check_kl_beta(answer: Any, phi: float, beta: float = 0.04) -> Check:
    """Chapter 4: the KL coefficient β* that keeps training unchanged when the rewards are scaled by φ
    (β at φ = 1 given). The gradient becomes φ·g_A + β*·∇R (Eqs. 21-23), which is φ·(g_A + β∇R) when
    β* = φβ; AdamW then ignores the common factor φ (Eq. 27)."""
    if not phi > 0:
        raise ValueError(f"phi must be > 0, got {phi!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    name = f"β* for rewards scaled by φ = {phi:g} (β = {beta:g} at φ = 1)"
    hint = "Write the gradient at scale φ as φ times something: the reward part scales with φ (Eq. 23)."
    result = check_close(name, answer, phi * beta, rtol=1e-6, atol=0.0, hint=hint)
    mistakes = [
        ("β / φ: that scales the KL term against the rewards twice over", beta / phi,
         "The reward term grew by φ: the KL term must grow by the same factor, not shrink."),
        ("β unchanged: then the KL term weighs 1/φ times as much against the rewards", beta,
         "Prop. 2 assumes β = 0; with β > 0 the balance of the two terms depends on φ."),
        ("φ²β: Adam's v scales by φ², but the gradient itself only by φ", phi**2 * beta,
         "Balance the gradient (Eq. 23), not the second moment."),
    ]
    return name_the_mistake(result, answer, mistakes, rtol=1e-6, atol=0.0)


def check_safe_scale(answer: Any, sqrt_v_hat: float, eps: float, tolerance: float = 0.01) -> Check:
    """Chapter 4: the smallest reward scale φ at which ε shrinks the step of a coordinate with this √v̂ (at
    φ = 1) by at most ``tolerance``: 1/(1 + ε/(φ√v̂)) ≥ 1 − tolerance (the display before Eq. 27)."""
    from companion.theory import smallest_safe_scale

    expected = smallest_safe_scale(sqrt_v_hat, eps, tolerance)
    name = f"smallest safe φ for √v̂ = {sqrt_v_hat:g}, ε = {eps:g}, tolerance {tolerance:g}"
    hint = ("At scale φ the preconditioner is φ√v̂ + ε, so the step is the ε = 0 step times "
            "1/(1 + ε/(φ√v̂)) (the display before Eq. 27). Set that equal to 1 − tolerance and solve for φ.")
    result = check_close(name, answer, expected, rtol=1e-4, atol=0.0, hint=hint)
    mistakes = [
        ("ε/(tolerance·√v̂): close, but the factor (1 − tolerance) is missing",
         eps / (tolerance * sqrt_v_hat),
         "Solve 1/(1 + x) = 1 − tolerance exactly: x = tolerance/(1 − tolerance)."),
        ("ε/√v̂: the scale at which the step is halved", eps / sqrt_v_hat,
         "At φ = ε/√v̂, ε/(φ√v̂) = 1 and the step is half its size; the tolerance asks for much less."),
        ("the reciprocal of the answer", 1 / expected, "φ multiplies √v̂ in the denominator of the step."),
    ]
    return name_the_mistake(result, answer, mistakes, rtol=1e-4, atol=0.0)
# --- chapter 3
# Shared prefixes (Prop. 1, App. B): the sign of W_agg on a prefix the whole group shares, weights that
# cancel on a partial prefix too, and the expected SGD step on a forced and on a sampled prefix. Pure Python,
# so the expected values never depend on the code the learner is testing.

CH03_WEIGHTINGS = ("grpo", "dr_grpo", "dapo")
CH03_MODES = ("forced", "sampled")


def _ch03_group(lengths: Any, rewards: Any) -> tuple[list[int], list[float]]:
    sizes = _positive_lengths(lengths)
    values = _as_float_list("rewards", rewards)
    if len(values) != len(sizes) or len(sizes) < 2:
        raise ValueError(f"lengths and rewards must describe the same group of >= 2 completions, got "
                         f"{len(sizes)} lengths and {len(values)} rewards")
    return sizes, values


def w_agg_reference(lengths: Any, rewards: Any, weighting: str = "grpo",
                    members: Sequence[int] | None = None) -> float:
    """W_agg = Σ_{i ∈ members} ω_i A_i at θ = θ_old (s = 1) of a prefix shared by ``members`` (default: the
    whole group): A_i = r_i − mean(r) (Eq. 2, σ left out), ω_i = 1/(G|o_i|) ("grpo"), 1/G ("dr_grpo") or
    1/Σ_j |o_j| ("dapo") (App. B.2)."""
    if weighting not in CH03_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {CH03_WEIGHTINGS}, got {weighting!r}")
    sizes, values = _ch03_group(lengths, rewards)
    n, mean = len(sizes), sum(values) / len(values)
    omega = {"grpo": [1.0 / (n * s) for s in sizes], "dr_grpo": [1.0 / n] * n,
             "dapo": [1.0 / sum(sizes)] * n}[weighting]
    rows = range(n) if members is None else members
    return sum(omega[i] * (values[i] - mean) for i in rows)


def _sign(value: float, scale: float) -> int:
    return 0 if abs(value) <= 1e-12 * max(scale, 1e-300) else (1 if value > 0 else -1)


def check_w_agg_signs(answer: Any, groups: Sequence[tuple[Any, Any]], weighting: str = "grpo") -> Check:
    """Chapter 3: the sign (+1, −1 or 0) of W_agg on the prefix that every completion of a group shares, for
    each group of ``groups`` = [(lengths, rewards), ...], under ``weighting`` (see :func:`w_agg_reference`).
    ``answer``: one sign per group."""
    expected = []
    for lengths, rewards in groups:
        sizes, values = _ch03_group(lengths, rewards)
        scale = max(abs(v) for v in values) / min(sizes)
        expected.append(_sign(w_agg_reference(sizes, values, weighting), scale))
    name = f"signs of W_agg under {weighting} for {len(expected)} groups"
    hint = ("W_agg = Σ_i ω_i A_i with A_i = r_i − mean(r). With ω_i ∝ 1/|o_i|, a short completion's "
            "advantage counts more than a long one's; with a constant ω, W_agg = C·Σ_i A_i.")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    try:
        got = _as_float_list("answer", answer)
    except TypeError as error:
        return Check(name, False, str(error), hint)
    if len(got) != len(expected):
        return Check(name, False, f"Expected {len(expected)} signs, one per group, got {len(got)}.", hint)
    if any(g not in (-1.0, 0.0, 1.0) for g in got):
        return Check(name, False, "Answer with +1, -1 or 0 for each group.", hint)
    if [int(g) for g in got] == expected:
        return Check(name, True, f"Signs {expected}.", hint)
    if [-int(g) for g in got] == expected:
        return Check(name, False, "Every sign is flipped: W_agg > 0 pushes the prefix up.", hint)
    wrong = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if int(g) != e]
    return Check(name, False, f"Group(s) {wrong} are wrong.", hint)


def check_partial_prefix_weights(answer: Any, lengths: Any, rewards: Any, members: Sequence[int]) -> Check:
    """Chapter 3: positive weights ω_i, one per completion, that cancel on the prefix the whole group shares
    *and* on the prefix shared by ``members`` only: Σ_i ω_i A_i = 0 and Σ_{i ∈ members} ω_i A_i = 0, with
    A_i = r_i − mean(r)."""
    sizes, values = _ch03_group(lengths, rewards)
    if not members or len(set(members)) != len(members) or not set(members) < set(range(len(sizes))):
        raise ValueError(f"members must be distinct row indices, a proper subset of 0..{len(sizes) - 1}, "
                         f"got {members!r}")
    mean = sum(values) / len(values)
    adv = [v - mean for v in values]
    name = f"weights that cancel on the whole group and on the prefix of completions {list(members)}"
    hint = ("Both sums are linear in ω. The whole-group sum minus the partial one is the sum over the other "
            "completions, so each part must cancel on its own: solve each part separately.")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    try:
        omega = _as_float_list("answer", answer)
    except TypeError as error:
        return Check(name, False, str(error), hint)
    if len(omega) != len(sizes):
        message = f"Expected {len(sizes)} weights, one per completion, got {len(omega)}."
        return Check(name, False, message, hint)
    if any(not (w > 0 and math.isfinite(w)) for w in omega):
        return Check(name, False, "Every weight must be a finite number > 0 (a zero weight drops a "
                                  "completion from the gradient).", hint)
    scale = sum(abs(w * a) for w, a in zip(omega, adv, strict=True)) or 1.0
    whole = sum(w * a for w, a in zip(omega, adv, strict=True))
    partial = sum(omega[i] * adv[i] for i in members)
    if abs(whole) <= 1e-9 * scale and abs(partial) <= 1e-9 * scale:
        return Check(name, True, "Both prefixes get W_agg = 0.", hint)
    if max(omega) - min(omega) <= 1e-12 * max(omega):
        return Check(name, False, f"Constant weights cancel on the whole group (C·Σ A_i = 0) but not on the "
                                  f"partial prefix: C·Σ_(i in members) A_i = {partial:.4g}.", hint)
    parts = [f"{label} sum Σ ω_i A_i = {value:.4g}" for label, value in (("whole-group", whole),
                                                                        ("partial-prefix", partial))
             if abs(value) > 1e-9 * scale]
    return Check(name, False, "The " + " and the ".join(parts) + ", not 0.", hint)


def expected_prefix_step(logits: Any, token: int, w_agg: float, lr: float, mode: str) -> list[float]:
    """E[Δz] of one SGD step (θ ← θ + lr ∇J) on the logits z of the prefix's softmax, when each group's W_agg
    has mean ``w_agg`` whatever prefix token was drawn: "forced" writes ``token``, so E[Δz] = lr·w·(e_token −
    p); "sampled" draws y ~ softmax(z), so E[Δz] = lr·w·Σ_y p_y (e_y − p) = 0 (score-function identity)."""
    if mode not in CH03_MODES:
        raise ValueError(f"mode must be one of {CH03_MODES}, got {mode!r}")
    z = _as_float_list("logits", logits)
    if not 0 <= token < len(z):
        raise ValueError(f"token must index the logits (0..{len(z) - 1}), got {token!r}")
    top = max(z)
    weights = [math.exp(v - top) for v in z]
    p = [w / sum(weights) for w in weights]
    if mode == "forced":
        return [lr * w_agg * ((1.0 if k == token else 0.0) - p[k]) for k in range(len(z))]
    mean_onehot = p  # E_{y~p}[e_y] = p, so E[e_y − p] = p − p = 0, exactly
    return [lr * w_agg * (mean_onehot[k] - p[k]) for k in range(len(z))]


def check_expected_prefix_step(answer: Any, logits: Any, token: int, w_agg: float, lr: float,
                               mode: str) -> Check:
    """Chapter 3: the expected SGD step on the prefix logits, for a ``"forced"`` or a ``"sampled"`` prefix
    (see :func:`expected_prefix_step`). ``answer``: one number per logit."""
    expected = expected_prefix_step(logits, token, w_agg, lr, mode)
    name = f"expected SGD step on the prefix logits, {mode} prefix"
    hint = ("∂log softmax(z)_y/∂z = e_y − p. A forced prefix always has y = the template token; a sampled "
            "one has y ~ p, so average e_y − p over y.")
    tolerance = 1e-9 * max(abs(lr * w_agg), 1e-300)
    result = check_close(name, answer, expected, rtol=1e-6, atol=tolerance, hint=hint)
    other = "sampled" if mode == "forced" else "forced"
    mistakes = [
        (f"the step of a {other} prefix", expected_prefix_step(logits, token, w_agg, lr, other),
         "Which token does the prefix hold: always the template, or a draw from p?"),
        ("the step with its sign flipped", [-e for e in expected], "Gradient ascent on J: Δz = +lr·∂J/∂z."),
        ("lr·w·e_token: the −p part is missing", [lr * w_agg * (1.0 if k == token else 0.0)
                                                 for k in range(len(expected))],
         "The softmax couples the logits: raising one token's log-probability lowers the others."),
    ]
    return name_the_mistake(result, answer, mistakes, rtol=1e-6, atol=1e-12)
# --- chapter 5 ---
# Momentum past the clip: C_T (Eq. 32), the distance Adam still travels once the clip has zeroed the
# gradient (Eqs. 36-37), and the largest μ that keeps that distance under a bound. Pure Python (written
# out from App. D, not through companion.theory), so the expected values do not depend on the code under
# study; tests/test_exercises.py checks that the two agree.


def _ch05_betas(beta1: float, beta2: float) -> None:
    if not (0.0 <= beta1 < 1.0 and 0.0 < beta2 < 1.0):
        raise ValueError(f"need 0 <= beta1 < 1 and 0 < beta2 < 1, got beta1={beta1!r}, beta2={beta2!r}")


def _ch05_whole(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def ch05_step_ratio(beta1: float, beta2: float, T: int, k: int) -> float:
    """C_{T,k} = ‖u_{T+k}‖/‖u_{T−1}‖ with ε = 0 (Eq. 36): the gradient is g for steps 1..T−1, then 0."""
    _ch05_betas(beta1, beta2)
    _ch05_whole("T", T, 2)
    _ch05_whole("k", k, 0)
    momentum = beta1 ** (k + 1) * (1 - beta1 ** (T - 1)) / (1 - beta1 ** (T + k))
    root_v = math.sqrt(beta2 ** (k + 1) * (1 - beta2 ** (T - 1)) / (1 - beta2 ** (T + k)))
    return momentum / root_v


def ch05_drift(beta1: float, beta2: float, T: int, K: int) -> float:
    """Σ_{k=0}^{K−1} C_{T,k}: how far the K steps after the gradient vanished carry the parameter, in units
    of the last gradient step lr·‖u_{T−1}‖ (= lr for a constant scalar gradient)."""
    _ch05_whole("K", K, 0)
    return math.fsum(ch05_step_ratio(beta1, beta2, T, k) for k in range(K))


def check_c_t(answer: Any, beta1: float, beta2: float, T: int) -> Check:
    """Chapter 5: C_T of Eq. 32 for (β1, β2, T), the ratio of the first step after the gradient vanished to
    the last step before it."""
    expected = ch05_step_ratio(beta1, beta2, T, 0)
    name = f"C_T for β1 = {beta1:g}, β2 = {beta2:g}, T = {T}"
    hint = ("Eq. 32 has two factors, both from the bias corrections: β1(1 − β1^(T−1))/(1 − β1^T) for m̂ and "
            "√[(1 − β2^T)/(β2 (1 − β2^(T−1)))] for 1/√v̂.")
    result = check_close(name, answer, expected, rtol=1e-4, atol=1e-9, hint=hint)
    limit = beta1 / math.sqrt(beta2)
    mistakes = [
        ("the large-T limit β1/√β2 (Eq. 33)", limit,
         "The limit holds once β1^T and β2^T are ≈ 0; at this T the bias corrections still matter."),
        ("the momentum factor alone", beta1 * (1 - beta1 ** (T - 1)) / (1 - beta1**T),
         "v̂ shrinks too after the gradient vanishes, and the step divides by √v̂: include that factor."),
        ("the v̂ factor without its square root",
         beta1 * (1 - beta1 ** (T - 1)) / (1 - beta1**T) * (1 - beta2**T) / (beta2 * (1 - beta2 ** (T - 1))),
         "The step divides by √v̂, so the v̂ ratio enters under a square root."),
    ]
    return name_the_mistake(result, answer, mistakes, rtol=1e-4, atol=1e-9)


def check_post_clip_drift(answer: Any, beta1: float, beta2: float, T: int, K: int) -> Check:
    """Chapter 5: how far the K steps after the gradient vanished (steps T, ..., T+K−1) carry a scalar
    parameter whose gradient was a constant g for steps 1..T−1, in units of lr (ε = 0, no weight decay):
    Σ_{k=0}^{K−1} C_{T,k} (Eq. 36)."""
    expected = ch05_drift(beta1, beta2, T, K)
    name = (f"drift after the gradient vanished, in units of lr (β1 = {beta1:g}, β2 = {beta2:g}, T = {T}, "
            f"K = {K})")
    hint = ("The last step before the gradient vanished has size lr (m̂/√v̂ = g/|g| for a constant g); the "
            "next K steps have sizes lr·C_{T,0}, ..., lr·C_{T,K−1}: add them up (Eq. 36).")
    result = check_close(name, answer, expected, rtol=1e-4, atol=1e-9, hint=hint)
    rho = beta1 / math.sqrt(beta2)
    mistakes = [
        ("the large-T form Σ (β1/√β2)^(k+1) (Eq. 37)", math.fsum(rho ** (k + 1) for k in range(K)),
         "Eq. 37 needs a large T; with a small T use the exact C_{T,k} of Eq. 36."),
        ("the limit for K → ∞ and T → ∞, β1/(√β2 − β1)", rho / (1 - rho) if rho < 1 else None,
         "That is where the drift ends after infinitely many steps of a long run; K and T are finite here."),
        ("one step too many (k = 0, ..., K)", ch05_drift(beta1, beta2, T, K + 1),
         "K steps after the gradient vanished are k = 0, ..., K − 1."),
        ("one step too few", ch05_drift(beta1, beta2, T, K - 1) if K >= 1 else None,
         "Count the first step after the gradient vanished too (k = 0, C_{T,0} = C_T)."),
    ]
    return name_the_mistake(result, answer, mistakes, rtol=1e-4, atol=1e-9)


def ch05_largest_mu(beta1: float, beta2: float, T: int, bound: float) -> int:
    """The largest number of inner steps μ ≥ T − 1 for which the steps after a token's gradient vanished
    (steps T, ..., μ: K = μ − T + 1 of them) carry it at most ``bound`` (units of lr) further."""
    if not bound >= 0:
        raise ValueError(f"bound must be >= 0, got {bound!r}")
    rho = beta1 / math.sqrt(beta2)
    if rho >= 1 or bound >= ch05_drift(beta1, beta2, T, 2000):
        raise ValueError(f"every μ keeps the drift below {bound!r} for beta1={beta1!r}, beta2={beta2!r}, "
                         f"T={T!r} (or the drift does not converge): choose a smaller bound")
    K = 0
    while ch05_drift(beta1, beta2, T, K + 1) <= bound:
        K += 1
    return T - 1 + K


def check_largest_mu(answer: Any, beta1: float, beta2: float, T: int, bound: float) -> Check:
    """Chapter 5: a fresh Adam(β1, β2) takes μ inner steps on one batch; a token's gradient is clipped away
    from step T on (its ratio left the clip range after T − 1 steps). The largest μ for which the momentum
    carries it at most ``bound`` lr further than the last gradient step (scalar model, ε = 0)."""
    expected = ch05_largest_mu(beta1, beta2, T, bound)
    name = f"largest μ with post-clip drift ≤ {bound:g}·lr (β1 = {beta1:g}, β2 = {beta2:g}, T = {T})"
    hint = ("Steps T, ..., μ come after the gradient vanished: K = μ − T + 1 of them. Add C_{T,0}, C_{T,1}, "
            "... while the sum stays within the bound.")
    result = check_close(name, answer, expected, rtol=0.0, atol=1e-9, hint=hint)
    mistakes = [
        ("the number K of post-clip steps, not μ", expected - T + 1, "μ counts the T − 1 steps before the "
         "clip too: μ = T − 1 + K."),
        ("one step too many: the drift then exceeds the bound", expected + 1,
         "Stop at the last μ whose total stays within the bound."),
    ]
    return name_the_mistake(result, answer, mistakes, rtol=0.0, atol=1e-9)
# --- Chapter 6 ---
# The loss is not a progress signal (Prop. 4, App. A): the loss of four methods at the first inner step,
# reading a logged loss curve, and the dashboard panel that reveals a failure. The expected values are
# computed here in pure Python from App. A's formulas, never from the code the learner is testing.

CH06_METHODS = ("grpo", "dapo", "dr_grpo", "gspo")
CH06_SIGMA_EPS = 1e-4  # companion's σ stabiliser (TRL's): A = (r − mean) / (σ + 1e-4), Bessel's σ

_CH06_LOSS_HINTS = {
    "grpo": "GRPO's α = 1/(N|o_i|) gives every completion Ω_i = 1/N (Eq. 9): what is Σ_i A_i in a group?",
    "gspo": "At s = 1 GSPO's sequence ratio is 1 too, and its α is GRPO's (Eq. 9).",
    "dapo": "DAPO: α = 1/Σ_j|o_j| over the whole batch, so Ω_i = |o_i|/Σ_j|o_j| (Eq. 10); A is divided by σ.",
    "dr_grpo": "Dr GRPO: α = 1/N per token, so Ω_i = |o_i|/N (Eq. 10); its A is not divided by σ.",
}


def _ch06_batch(rewards: Any, lengths: Any, group_size: int) -> tuple[list[float], list[int]]:
    values = _as_float_list("rewards", rewards)
    sizes = _positive_lengths(lengths)
    if len(sizes) != len(values):
        raise ValueError(f"rewards and lengths differ in length: {len(values)} and {len(sizes)}")
    _ch01_groups(values, group_size)  # group_size divides N, >= 2
    return values, sizes


def first_step_loss_reference(method: str, rewards: Any, lengths: Any, group_size: int, *,
                              std: bool | None = None, batch_normaliser: bool = True) -> float:
    """The policy loss −J of ``method`` at the first inner step (s = 1, β = 0), App. A:
    loss = −Σ_i A_i Ω_i (Eq. 8) with Ω_i = Σ_t α_{i,t}. ``std`` None uses the method's own choice (σ for
    GRPO, DAPO, GSPO; none for Dr GRPO); ``batch_normaliser=False`` gives DAPO's 1/Σ|o_j| per group instead
    of over the batch (a common mistake the check names)."""
    if method not in CH06_METHODS:
        raise ValueError(f"method must be one of {CH06_METHODS}, got {method!r}")
    values, sizes = _ch06_batch(rewards, lengths, group_size)
    divide = method != "dr_grpo" if std is None else std
    adv = group_advantages_reference(values, group_size, std=divide, std_eps=CH06_SIGMA_EPS)
    n = len(values)
    if method in ("grpo", "gspo"):
        omega = [1.0 / n] * n
    elif method == "dr_grpo":
        omega = [size / n for size in sizes]
    elif batch_normaliser:
        omega = [size / sum(sizes) for size in sizes]
    else:  # per group, then averaged over the groups
        groups = n // group_size
        omega = [size / sum(sizes[k - k % group_size:k - k % group_size + group_size]) / groups
                 for k, size in enumerate(sizes)]
    value = -math.fsum(a * w for a, w in zip(adv, omega, strict=True))
    return 0.0 if abs(value) < 1e-15 else value  # Σ_i A_i = 0 up to the rounding of A


def check_first_step_loss(method: str, answer: Any, rewards: Any, lengths: Any, *, group_size: int) -> Check:
    """Chapter 6: the loss that ``method`` ("grpo", "dapo", "dr_grpo" or "gspo") logs at the first inner
    step for a batch with these ``rewards`` and completion ``lengths`` (groups of ``group_size``,
    contiguous), with β = 0. ``answer``: one number, the loss −J. A wrong answer that matches a common
    mistake (J instead of −J, σ where the method has none or none where it has one, DAPO's normaliser per
    group) is named in the message."""
    expected = first_step_loss_reference(method, rewards, lengths, group_size)
    name = f"first-step loss of {method}"
    hint = _CH06_LOSS_HINTS[method]
    result = check_close(name, answer, expected, rtol=1e-6, atol=1e-9, hint=hint)
    divide = method != "dr_grpo"
    mistakes = [
        ("J, not the loss −J", -expected if expected else None,
         "Trainers minimise the loss −J: flip the sign of Σ_i A_i Ω_i."),
        ("the loss " + ("without" if divide else "with") + " σ(r) in the advantage",
         first_step_loss_reference(method, rewards, lengths, group_size, std=not divide),
         "GRPO, DAPO and GSPO divide A by the group's σ (Bessel, + 1e-4); Dr GRPO does not."),
        ("DAPO's loss with 1/Σ|o_j| taken per group, not over the batch",
         first_step_loss_reference(method, rewards, lengths, group_size, batch_normaliser=False)
         if method == "dapo" else None,
         "DAPO's token mean runs over every token of the batch at once: one Σ_j |o_j| for all groups."),
    ]
    return name_the_mistake(result, answer, mistakes, rtol=1e-6, atol=1e-9)


CH06_CURVE_STATEMENTS = {
    "a": "The policy is getting worse: a loss should fall while the reward rises.",
    "b": "At the first inner step this loss is −Σ_i A_i|o_i|/Σ_j|o_j| (Eq. 10); it is positive because, "
         "within groups, the completions with the higher rewards are the shorter ones.",
    "c": "It rises because the KL term to π_ref grows.",
    "d": "A loss that rises while the reward rises means the learning rate is too high.",
    "e": "Under GRPO's weights 1/(G|o_i|) the same batches would log a loss of 0 (up to rounding).",
    "f": "When this loss reaches 0 the gradient is 0 too, so training has stopped.",
}
CH06_CURVE_TRUE = frozenset({"b", "e"})
_CH06_CURVE_WHY = {
    "a": "the loss at s = 1 is a length statistic (Eq. 10), not a measure of performance",
    "b": "it is Eq. 10 with C = 1/Σ_j|o_j|, and the task rewards short correct answers",
    "c": "β = 0 in this run: there is no KL term",
    "d": "the logged value says nothing about the step size; its sign comes from Cov(A, |o|)",
    "e": "with Ω_i constant, Σ_i A_i Ω_i = C Σ_i A_i = 0 in every group (Eq. 9)",
    "f": "the value Σ_i A_i Ω_i can be 0 while the gradient Σ_i A_i Σ_t α_{i,t} ∇log π is not: each "
         "completion has its own ∇log π",
}


def check_logged_curve(answer: Any) -> Check:
    """Chapter 6: which of ``CH06_CURVE_STATEMENTS`` explain the logged curve of the chapter's exercise (DAPO,
    β = 0, μ = 1, a reward that favours short correct answers: the loss rises with the reward)? ``answer``:
    a collection of statement letters."""
    name = "statements that explain the logged curve"
    hint = ("With μ = 1 every logged loss is taken at s = 1, so it is −Σ_i A_i Ω_i + βR (Eq. 8). Work out "
            "Ω_i for DAPO's weights, and remember β = 0.")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    chosen = {answer} if isinstance(answer, str) else answer
    try:
        chosen = {str(item).strip().lower() for item in chosen}
    except TypeError:
        return Check(name, False, f"Expected a collection of letters, got {type(answer).__name__}.", hint)
    unknown = sorted(chosen - set(CH06_CURVE_STATEMENTS))
    if unknown:
        return Check(name, False, f"Not statements: {unknown}; choose among {sorted(CH06_CURVE_STATEMENTS)}.",
                     hint)
    if chosen == CH06_CURVE_TRUE:
        return Check(name, True, f"Exactly {sorted(CH06_CURVE_TRUE)}.", hint)
    wrong = [f"{k} is true: {_CH06_CURVE_WHY[k]}" for k in sorted(CH06_CURVE_TRUE - chosen)]
    wrong += [f"{k} is false: {_CH06_CURVE_WHY[k]}" for k in sorted(chosen - CH06_CURVE_TRUE)]
    return Check(name, False, "; ".join(wrong) + ".", hint)


# failure -> (description, panels that reveal it, hint)
CH06_FAILURES: dict[str, tuple[str, frozenset[str], str]] = {
    "zero_loss": ("TRL, loss_type='grpo', β = 0, num_iterations = 1: the logged loss is 0.0 at every step "
                  "and the reward is flat. Is there any learning signal in the batches?",
                  frozenset({"tied", "grad_norm"}),
                  "A loss of 0 is expected here (Eq. 9). What carries no signal at all is a group whose "
                  "rewards are all equal; its gradient is 0."),
    "kl_rising": ("GRPO with β = 0.04: the logged loss rises steadily from 0. Which panel shows the quantity "
                  "it follows?", frozenset({"kl", "loss"}),
                  "At s = 1 GRPO's loss is βR (Eq. 9): R is a KL estimate to π_ref."),
    "reward_scale": ("Rewards were rescaled to 1e-6 and training with AdamW slowed to a crawl.",
                     frozenset({"eps"}),
                     "Prop. 2 holds while ε ≪ φ√v̂; which panel counts the coordinates where it does not?"),
    "past_clip": ("With μ = 8, parameters keep moving on tokens whose gradient the clip has already zeroed.",
                  frozenset({"momentum", "ratio"}),
                  "Prop. 3: AdamW's momentum carries on after the gradient vanishes. Which panel counts "
                  "coordinates with g = 0 and m ≠ 0, or shows ratios beyond 1 ± ε?"),
    "length_drift": ("The completions grow shorter although the reward ignores length.",
                     frozenset({"length"}),
                     "Prop. 1: weights 1/|o_i| favour short completions on shared prefixes."),
}


def check_dashboard_panel(failure: str, answer: Any) -> Check:
    """Chapter 6: which panel of ``cp.viz.dashboard`` (a key of ``cp.viz.DASHBOARD_PANELS``) reveals the
    failure ``CH06_FAILURES[failure]``? ``answer``: one panel key, e.g. "tied"."""
    from companion.viz import DASHBOARD_PANELS

    if failure not in CH06_FAILURES:
        raise ValueError(f"failure must be one of {sorted(CH06_FAILURES)}, got {failure!r}")
    _, panels, hint = CH06_FAILURES[failure]
    name = f"the panel for {failure!r}"
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    if not isinstance(answer, str) or answer not in DASHBOARD_PANELS:
        valid = list(DASHBOARD_PANELS)
        return Check(name, False, f"Answer with a panel key, one of {valid}; got {answer!r}.", hint)
    if answer in panels:
        others = sorted(panels - {answer})
        also = f" ({', '.join(others)} shows it too.)" if others else ""
        return Check(name, True, f"{answer!r}: {DASHBOARD_PANELS[answer].title}.{also}", hint)
    return Check(name, False, f"{answer!r} ({DASHBOARD_PANELS[answer].title}) does not reveal it.", hint)
# --- chapter 7 ---
# From the toy to your trainer: read a TRL or verl configuration, name the biases it is exposed to, and
# propose the change (companion.audit does the reading).

CH07_CHAPTERS = ("ch03", "ch04", "ch05", "ch06")
CH07_READING_KEYS = ("group_size", "inner_steps", "aggregation")


def check_config_reading(answer: Any, config: Mapping[str, Any], trainer: str | None = None) -> Check:
    """Chapter 7: the group size, the optimizer steps per batch (μ) and the aggregation of Eq. 1 that a
    configuration gives, as ``{"group_size": int, "inner_steps": int, "aggregation": str}``."""
    from companion.audit import load

    reading = load(config, trainer)
    expected = {"group_size": reading.group_size, "inner_steps": reading.inner_steps,
                "aggregation": reading.objective.aggregation}
    name = "reading of the configuration"
    hints = {"group_size": "The group is TRL's num_generations or verl's actor_rollout_ref.rollout.n.",
             "inner_steps": "μ counts optimizer steps per batch of samples: passes (num_iterations, "
                            "ppo_epochs) times the steps of one pass (TRL: steps_per_generation / "
                            "gradient_accumulation_steps; verl: train_batch_size / ppo_mini_batch_size).",
             "aggregation": "An unset loss_agg_mode (or loss_type) takes the trainer's default; the names "
                            "are those of cp.objective.AGGREGATIONS."}
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hints["inner_steps"])
    if not isinstance(answer, Mapping) or set(answer) != set(CH07_READING_KEYS):
        return Check(name, False, f"Expected a dict with exactly the keys {list(CH07_READING_KEYS)}.")
    wrong = [key for key in CH07_READING_KEYS if answer[key] != expected[key]]
    if wrong:
        return Check(name, False, f"Not yet right: {wrong}.", hints[wrong[0]])
    return Check(name, True, "Group size, μ and α all match.")


def check_exposed_chapters(answer: Any, configs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> Check:
    """Chapter 7: for each named ``(trainer, fields)`` configuration, the set of chapters (of
    ``CH07_CHAPTERS``) whose finding ``companion.audit`` reports it exposed to."""
    from companion.audit import audit

    expected = {name: audit(fields, trainer).exposed for name, (trainer, fields) in configs.items()}
    name = "biases of each configuration"
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).",
                     "Go through the four checklists of this chapter for each configuration.")
    if not isinstance(answer, Mapping) or set(answer) != set(expected):
        return Check(name, False, f"Expected a dict with the keys {sorted(expected)}, one set each.")
    unknown = {ch for chapters in answer.values() for ch in chapters} - set(CH07_CHAPTERS)
    if unknown:
        return Check(name, False, f"Unknown chapter name(s) {sorted(unknown)}; use {list(CH07_CHAPTERS)}.")
    for key in sorted(expected):
        mine, target = set(answer[key]), expected[key]
        if mine != target:
            missing, extra = sorted(target - mine), sorted(mine - target)
            detail = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                                 f"not exposed to {extra}" if extra else "") if part)
            return Check(name, False, f"Configuration {key}: {detail}.",
                         "Chapter 6 applies to every configuration. For the others: does α differ between "
                         "completions (ch03)? Are the advantages divided by σ(r) (ch04)? Is μ > 1 with Adam "
                         "and a hard clip (ch05)?")
    return Check(name, True, "Every configuration's exposures match the audit.")


def check_config_change(answer: Any, config: Mapping[str, Any], *, remove: Sequence[str] = ("ch03", "ch05"),
                        max_changes: int = 2, keep: Sequence[str] = ("learning_rate", "adam_beta1",
                                                                     "adam_beta2", "optim")) -> Check:
    """Chapter 7: at most ``max_changes`` TRL fields that, changed in ``config``, leave none of the chapters
    ``remove`` exposed, without touching the fields in ``keep``."""
    from companion.audit import AuditError, audit

    name = f"a change that removes {list(remove)}"
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).",
                     "One field per finding: the weights for ch03, the steps per batch for ch05.")
    if not isinstance(answer, Mapping) or not answer:
        return Check(name, False, "Expected a non-empty dict of the fields you change.")
    if len(answer) > max_changes:
        return Check(name, False, f"{len(answer)} fields changed; at most {max_changes}.")
    touched = sorted(set(answer) & set(keep))
    if touched:
        return Check(name, False, f"{touched} must stay as they are (the optimizer and its learning rate).")
    try:
        report = audit({**config, **answer}, trainer="trl")
    except AuditError as error:
        return Check(name, False, f"The changed configuration is not valid: {error}")
    left = sorted(set(remove) & report.exposed)
    if left:
        return Check(name, False, f"Still exposed to {left}.",
                     "ch03: one weight per token (loss_type). ch05: one optimizer step per batch.")
    return Check(name, True, f"The audit reports neither {' nor '.join(remove)}.")


# --- chapter 8 ---
# A tiny R1-Zero: read a run's readings as the book's four biases, remove one with one setting, and predict
# the length of the incorrect answers of a configuration that was not run. The answers are derived here from
# the readings and the objectives' fields, with the rules the chapter measures.

CH08_CHAPTERS = ("ch03", "ch04", "ch05", "ch06")
CH08_READINGS = ("w_agg_format_max", "eps_dominated_moving", "inner_steps", "past_clip_after_last", "beta1")
CH08_EPS_TAKEOVER = 0.05  # a share of moving coordinates with ε >= √v̂ above this: ε sets the step (ch04)
CH08_STARTS = ("blind", "knows")
CH08_CURVES = ("up", "flat", "down")
LENGTH_NORMALISED = ("seq_mean_token_mean", "seq_mean")  # α ∝ 1/|o_i|: Table 1's α^S


def ch08_visible_biases(readings: Mapping[str, Any]) -> set[str]:
    """The chapters whose bias a run's readings show: W_agg ≠ 0 on the format token (ch03), more than
    ``CH08_EPS_TAKEOVER`` of the moving coordinates ε-dominated (ch04), tokens past the clip after the last
    of μ > 1 inner steps with momentum β1 > 0 (ch05), and the loss, never a progress signal (ch06)."""
    missing = sorted(set(CH08_READINGS) - set(readings))
    if missing:
        raise ValueError(f"readings: missing {missing}; give {list(CH08_READINGS)}")
    visible = {"ch06"}
    if abs(float(readings["w_agg_format_max"])) > 1e-6:
        visible.add("ch03")
    if float(readings["eps_dominated_moving"]) > CH08_EPS_TAKEOVER:
        visible.add("ch04")
    if int(readings["inner_steps"]) > 1 and float(readings["past_clip_after_last"]) > 0 \
            and float(readings["beta1"]) > 0:
        visible.add("ch05")
    return visible


def _chapter_set(name: str, answer: Any, hint: str) -> tuple[set[str] | None, Check | None]:
    """The learner's answer as a set of chapter names, or the failed Check that says why it is not one."""
    if answer is None:
        return None, Check(name, False, "No answer yet (the value is None).", hint)
    chosen = {answer} if isinstance(answer, str) else answer
    try:
        chosen = {str(item).strip().lower() for item in chosen}
    except TypeError:
        return None, Check(name, False, f"Expected a set of chapter names, got {type(answer).__name__}.",
                           hint)
    unknown = sorted(chosen - set(CH08_CHAPTERS))
    if unknown:
        return None, Check(name, False, f"Unknown chapter name(s) {unknown}; use {list(CH08_CHAPTERS)}.",
                           hint)
    return chosen, None


def check_run_diagnosis(answer: Any, readings: Mapping[str, Any]) -> Check:
    """Chapter 8: which of the book's biases (``CH08_CHAPTERS``) do a run's ``readings`` show? ``answer``: a
    set of chapter names, e.g. {"ch03", "ch06"}."""
    expected = ch08_visible_biases(readings)
    name = "the biases this run shows"
    hint = ("One reading per chapter: W_agg on the format token (ch03), the ε-dominated share of the moving "
            "coordinates (ch04), tokens past the clip after the last inner step with μ > 1 and β1 > 0 "
            "(ch05); and the loss is never a progress signal (ch06).")
    chosen, failed = _chapter_set(name, answer, hint)
    if failed is not None:
        return failed
    if chosen == expected:
        return Check(name, True, f"Exactly {sorted(expected)}.", hint)
    missing, extra = sorted(expected - chosen), sorted(chosen - expected)
    detail = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                         f"not shown: {extra}" if extra else "") if part)
    return Check(name, False, detail + ".", hint)


def check_prefix_fix(answer: Any, preset: str = "grpo_r1", group_size: int = 8) -> Check:
    """Chapter 8: one field of ``preset``'s Objective, changed, that leaves no push on a prefix the whole
    group shares (W_agg = 0 in a group whose right answers are 4x shorter than its wrong ones).
    ``answer``: a dict ``{field: value}`` with exactly one entry."""
    from companion.audit import shared_prefix_push
    from companion.objective import Objective

    name = f"one change to {preset} that removes the push on the format token"
    hint = ("W_agg = Σ_i ω_i A_i, and Σ_i A_i = 0 in a group: which field makes ω the same for every "
            "completion of a group? (cp.objective.AGGREGATIONS lists the choices.)")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    if not isinstance(answer, Mapping) or len(answer) != 1:
        return Check(name, False, "Expected a dict with exactly one field, e.g. {'clip_high': 0.28}.", hint)
    try:
        objective = Objective.preset(preset, **dict(answer))
    except (TypeError, ValueError) as error:
        return Check(name, False, f"Not a valid change: {error}", hint)
    net, w_agg = shared_prefix_push(objective, group_size, 2, 8)
    if net > 1e-9:
        return Check(name, False, f"W_agg = {w_agg:.3g} still: a net push of {net:.0%} of the gross.", hint)
    return Check(name, True, f"W_agg = 0 with {dict(answer)}.", hint)


def ch08_length_curve(objective: Any, start: str) -> str:
    """The expected drift of the incorrect answers' length: "up" when the weights are ∝ 1/|o_i| and the
    model can tell, before it stops, that it is going wrong (``start="knows"``); "flat" otherwise (weights
    the same for every token, or a length decided before anything that predicts the outcome, "blind")."""
    if start not in CH08_STARTS:
        raise ValueError(f"start must be one of {CH08_STARTS}, got {start!r}")
    normalised = objective.aggregation in LENGTH_NORMALISED
    return "up" if normalised and start == "knows" else "flat"


def check_length_prediction(answer: Any, configs: Mapping[str, tuple[str, str]]) -> Check:
    """Chapter 8: for each ``label: (preset, start)``, how the mean length of the incorrect answers moves
    in expectation ("up", "flat" or "down"). ``answer``: a dict label -> curve."""
    from companion.objective import Objective

    expected = {label: ch08_length_curve(Objective.preset(preset), start)
                for label, (preset, start) in configs.items()}
    name = "the length of the incorrect answers"
    hint = ("GRPO's expected push on the length in a context c is E[A | c]·∇E[1/|o| | c]: it needs weights "
            "∝ 1/|o_i| (Table 1's α^S) and a context that predicts the outcome. Read each preset's α.")
    if answer is None:
        return Check(name, False, "No answer yet (the value is None).", hint)
    if not isinstance(answer, Mapping) or set(answer) != set(expected):
        return Check(name, False, f"Expected a dict with the keys {sorted(expected)}.", hint)
    bad = sorted(label for label, curve in answer.items() if curve not in CH08_CURVES)
    if bad:
        return Check(name, False, f"Answer each with one of {list(CH08_CURVES)}; not {bad}.", hint)
    wrong = sorted(label for label in expected if answer[label] != expected[label])
    if wrong:
        return Check(name, False, f"Not yet right: {wrong}.", hint)
    return Check(name, True, "Every curve matches.", hint)
