"""Side-by-side benchmarks. Usage: python benchmarks/run.py {objective,optimizer,lab} [...]

Each benchmark prints lines of the form `name value unit`, measured in one run, and the ratios
between the timed variants. Benchmarks are never run as timed unit tests.
"""

import importlib
import sys
from pathlib import Path

BENCHMARKS = ("objective", "optimizer", "lab")


def main(argv: list[str]) -> None:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    sys.path.insert(0, str(Path(__file__).parent))
    for name in names:
        importlib.import_module(f"bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
