"""One measured comparison: companion's variant against its hand-written (or torch) baseline."""

from __future__ import annotations

from dataclasses import dataclass

from timing import Timing

SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6}


@dataclass(frozen=True)
class Row:
    name: str  # e.g. lab_tabular
    what: str  # what is timed, in words
    ours: Timing
    baseline: Timing
    target: float | None  # the ratio to stay at or under (None: information, more work than the baseline)
    unit: str = "ms"  # how the absolute times are shown

    @property
    def ratio(self) -> float:
        """CPU time of companion's variant over the baseline's."""
        return self.ours.cpu / self.baseline.cpu

    def lines(self) -> list[str]:
        """``name value unit`` lines: the ratio, then the absolute times (information only)."""
        scale = SCALE[self.unit]
        target = "no target" if self.target is None else f"target <= {self.target}"
        return [f"{self.name}_ratio {self.ratio:.3f} x ({target})",
                f"{self.name}_companion_cpu {self.ours.cpu * scale:.3f} {self.unit}",
                f"{self.name}_baseline_cpu {self.baseline.cpu * scale:.3f} {self.unit}",
                f"{self.name}_companion_wall {self.ours.wall * scale:.3f} {self.unit}",
                f"{self.name}_baseline_wall {self.baseline.wall * scale:.3f} {self.unit}"]
