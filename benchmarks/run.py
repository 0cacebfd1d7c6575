"""Side-by-side benchmarks: companion against hand-written (or torch) baselines, interleaved in one run.

    .venv/bin/python benchmarks/run.py all                     # every ratio, once
    .venv/bin/python benchmarks/run.py lab --repeats 3         # median and spread over three runs
    .venv/bin/python benchmarks/run.py all --repeats 3 --markdown   # the tables of book/benchmarks.md

Each comparison prints ``<name>_ratio <value> x (target <= t)``: companion's CPU time over the baseline's
(one thread, medians over interleaved rounds; see timing.py), then the absolute times as information.
``--quick`` runs tiny sizes (a smoke test: tests/test_benchmarks.py). Benchmarks are never timed tests.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repository's companion

BENCHMARKS = ("lab", "objective", "optimizer")


def machine() -> str:
    """The CPU, its cores, torch's version and the thread count, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def steady_allocator() -> str:
    """Keep freed memory in the process (glibc: no mmap for blocks up to 32 MiB, no trimming), so that a
    baseline's parameter-sized temporaries reuse warm pages at every call. Otherwise their cost depends on
    the allocator's history: torch's foreach AdamW step took 23 or 42 ms on the same 10 M parameters in two
    processes here, as its temporaries came from reused or from fresh, zero-filled pages. This pins every
    baseline to its faster state (companion's chunked optimizer step makes no such temporaries)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
    if libc is None or not hasattr(libc, "mallopt"):
        return "allocator: as the platform sets it (no glibc mallopt)"
    steady = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    return "allocator: steady (glibc mallopt)" if steady else "allocator: as glibc sets it (mallopt refused)"


def markdown(rows_by_repeat: list[list], repeats: int) -> str:
    """A table per benchmark run: the median ratio over repeats and its spread."""
    lines = ["| what | companion (CPU) | baseline (CPU) | ratio | spread | target |",
             "|---|---|---|---|---|---|"]
    for index, row in enumerate(rows_by_repeat[0]):
        ratios = [rows[index].ratio for rows in rows_by_repeat]
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[row.unit]
        ours = statistics.median(rows[index].ours.cpu for rows in rows_by_repeat) * scale
        base = statistics.median(rows[index].baseline.cpu for rows in rows_by_repeat) * scale
        spread = f"{min(ratios):.2f}–{max(ratios):.2f}" if repeats > 1 else "–"
        lines.append(f"| {row.what} | {ours:.3g} {row.unit} | {base:.3g} {row.unit} | "
                     f"**{statistics.median(ratios):.2f}×** | {spread} | "
                     f"{'–' if row.target is None else f'≤ {row.target}'} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=["all"], help=f"any of {', '.join(BENCHMARKS)}, or all")
    parser.add_argument("--repeats", type=int, default=1, help="whole runs; the median ratio and the spread")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--markdown", action="store_true", help="also print markdown tables")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if "all" in args.names else args.names
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS} or all")
    import torch

    torch.set_num_threads(1)  # every benchmark runs on one thread
    print(f"# {datetime.date.today().isoformat()}, {machine()}, {steady_allocator()}", flush=True)
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        rows_by_repeat = []
        for repeat in range(args.repeats):
            rows = module.run(quick=args.quick)
            rows_by_repeat.append(rows)
            for row in rows:
                print(*row.lines() if repeat == 0 and args.repeats == 1 else row.lines()[:1], sep="\n",
                      flush=True)
        if args.repeats > 1:
            for index, row in enumerate(rows_by_repeat[0]):
                ratios = [rows[index].ratio for rows in rows_by_repeat]
                target = "no target" if row.target is None else f"target <= {row.target}"
                print(f"{row.name}_ratio_median {statistics.median(ratios):.3f} x over {args.repeats} runs "
                      f"(spread {min(ratios):.3f}-{max(ratios):.3f}; {target})", flush=True)
        if args.markdown:
            print(f"\n{markdown(rows_by_repeat, args.repeats)}\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
