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
        colour = "#2ca58d" if self.passed else "#d55e00"
        mark = "✅ passed" if self.passed else "❌ not yet"
        body = f"<b style='color:{colour}'>{mark}</b>: {html.escape(self.name)}. {html.escape(self.message)}"
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
