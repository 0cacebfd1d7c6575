"""Interleaved timing shared by the benchmarks: every variant runs once per round, in turn, so that load on a
shared machine hits them alike; the median over rounds is reported.

Times are CPU seconds of this process (``time.process_time``, one thread): the work a variant costs, without
the time spent waiting for a core that other processes hold. Wall-clock medians are kept as information.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    cpu: float  # median CPU seconds per call
    wall: float  # median wall-clock seconds per call


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, Timing]:
    """Median CPU and wall time per call of each variant, over ``rounds`` interleaved rounds."""
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + rounds):
        for name, fn in variants.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            if round_index >= warmup:
                cpu[name].append(time.process_time() - cpu_start)
                wall[name].append(time.perf_counter() - wall_start)
    return {name: Timing(statistics.median(cpu[name]), statistics.median(wall[name])) for name in variants}
