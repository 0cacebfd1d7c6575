"""Check the "runs on a GPU" promise in one command: execute every chapter, time it, and print the benchmarks.

    .venv/bin/python benchmarks/gpu_check.py            # every book/ch*.ipynb, then benchmarks/run.py all
    .venv/bin/python benchmarks/gpu_check.py --quick --chapters book/ch01_group_rl.ipynb

The chapters run as they are, in a fresh kernel each (nbclient), so ``cp.lab.train`` picks CUDA when it is
present and the CPU otherwise (``CUDA_VISIBLE_DEVICES=`` forces the CPU); the exact checks pin the CPU and
float64 themselves. Printed: the device, then one line per chapter (seconds, ok or the error), then the lab
on this device against the CPU (the tabular benchmark run, 64 seeds x 200 steps), then every ratio of
benchmarks/run.py (CPU, one thread). Exit status 1 if a chapter failed. ``--quick`` shrinks the lab run
and the benchmarks (a smoke test: tests/test_benchmarks.py runs it on the CPU with a tiny notebook).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT))


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, torch {torch.__version__})"
    return f"cpu (no CUDA device visible; torch {torch.__version__})"


def execute(path: Path, timeout: int) -> tuple[float, str]:
    """Run a notebook top to bottom in a fresh kernel; (seconds, "ok" or the error's last line)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except Exception as error:  # a failing cell: report it and go on with the next chapter
        message = str(error).strip().splitlines()
        return time.perf_counter() - start, f"FAILED: {message[-1] if message else type(error).__name__}"
    return time.perf_counter() - start, "ok"


def lab_on_devices(quick: bool) -> list[str]:
    """The tabular lab run (GRPO, 64 seeds x 200 steps) on the CPU and, when present, on CUDA."""
    import torch

    import companion as cp

    seeds, steps = (8, 10) if quick else (64, 200)
    task = cp.make_task("pick")
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    lines = []
    for device in devices:
        seconds = []
        for _ in range(2):  # the first call warms up (CUDA context, kernels)
            policy = cp.TabularPolicy.for_task(task, num_seeds=seeds)
            start = time.perf_counter()
            cp.lab.train(policy, task, cp.Objective.preset("grpo"), steps=steps, group_size=8,
                         prompts_per_step=4, lr=0.1, device=device, progress=False)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        lines.append(f"lab_tabular_{seeds}_seeds_{steps}_steps_{device} {seconds[-1]:.2f} s")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapters", nargs="*", type=Path, help="notebooks (default: book/ch*.ipynb)")
    parser.add_argument("--quick", action="store_true", help="small lab run and quick benchmarks")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    chapters = args.chapters or sorted((ROOT / "book").glob("ch*.ipynb"))
    print(f"# device: {device_line()}", flush=True)
    failed = False
    for path in chapters:
        seconds, status = execute(path, args.timeout)
        failed |= status != "ok"
        print(f"chapter {path.stem} {seconds:.1f} s {status}", flush=True)
    for line in lab_on_devices(args.quick):
        print(line, flush=True)
    import run

    run.main(["all", *(["--quick"] if args.quick else [])])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
