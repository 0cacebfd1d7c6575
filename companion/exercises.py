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
from collections.abc import Sequence
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
