"""Mutation testing of the core modules with mutmut: how many single-edit bugs do a module's own tests catch?

    .venv/bin/python tools/mutation.py                       # objective optim theory prefix lab, 60 each
    .venv/bin/python tools/mutation.py prefix --sample 0     # every mutant of one module
    .venv/bin/python tools/mutation.py lab --sample 100 --seed 1 --jobs 2

For each module, a scratch copy of the repository under ``.mutation/seed<seed>/<module>/`` (git-ignored)
gets a ``[tool.mutmut]`` section that mutates ``companion/<module>.py`` only and runs
``tests/test_<module>.py`` only: each module is judged by its own tests. mutmut makes every single-edit
mutant of the module (an operator, a comparison, a number, a keyword argument, a call argument replaced or
dropped ...); this script draws ``--sample`` of them at random (seeded; 0 = all), runs mutmut on those, and
prints per module

    killed / checked = score        (killed: a test fails or times out; checked: every mutant drawn)

Mutants in functions no test reaches count as survivors. The text of error messages (``raise`` statements)
is not mutated: tests check that an error is raised and which argument it names, not its wording; the
condition that raises is mutated. Surviving mutants are listed with ``mutmut show <name>`` run inside the
module's scratch directory. The target is 85 % per module (issue 13); this is not part of CI (a full run
takes hours on two cores), so run it before refactoring a module and after adding tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("objective", "optim", "theory", "prefix", "lab")
KILLED_CODES = {1, 3, 24, -24, 36, 152, 255}  # mutmut's "killed" and "timeout" exit codes
CONFIG = """
[tool.mutmut]
source_paths = ["companion"]
only_mutate = ["companion/{module}.py"]
pytest_add_cli_args_test_selection = ["tests/test_{module}.py"]
pytest_add_cli_args = ["-p", "no:cacheprovider"]
also_copy = ["book"]
do_not_mutate_patterns = ["raise "]
process_isolation = "forkserver"
"""


def prepare(module: str, workdir: Path) -> None:
    """A fresh scratch copy of the package, the tests, the book's text and pyproject.toml (with the mutmut
    section)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in ("companion", "tests", "book"):  # book: the bibliography and pages some tests read
        shutil.copytree(ROOT / name, workdir / name,
                        ignore=shutil.ignore_patterns("__pycache__", "_build", "_vendor", "*.ipynb"))
    pyproject = (ROOT / "pyproject.toml").read_text() + CONFIG.format(module=module)
    (workdir / "pyproject.toml").write_text(pyproject)


def mutant_names(module: str, workdir: Path) -> list[str]:
    """Every mutant mutmut makes of the module, by the same code mutmut runs (so the names match)."""
    code = (
        "from mutmut.mutation.file_mutation import mutate_file_contents\n"
        f"path = 'companion/{module}.py'\n"
        "print('\\n'.join(mutate_file_contents(path, open(path).read()).mutant_names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, check=True, capture_output=True,
                         text=True)
    return [f"companion.{module}.{name}" for name in out.stdout.split()]


def run_mutmut(workdir: Path, names: list[str], jobs: int) -> dict[str, int | None]:
    """Run mutmut on ``names``; return their exit codes (None: not run)."""
    env = {**os.environ, "PYTHONPATH": ""}  # the scratch copy's package, not the caller's
    mutmut = Path(sys.executable).parent / "mutmut"
    subprocess.run([str(mutmut), "run", "--max-children", str(jobs), *names], cwd=workdir, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = json.loads(next((workdir / "mutants" / "companion").glob("*.py.meta")).read_text())
    codes = meta["exit_code_by_key"]
    return {name: codes.get(name) for name in names}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="module",
                        help=f"any of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--sample", type=int, default=60, help="mutants drawn per module (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {MODULES}")
    below_target = False
    for module in args.modules or MODULES:
        workdir = ROOT / ".mutation" / f"seed{args.seed}" / module
        prepare(module, workdir)
        names = mutant_names(module, workdir)
        drawn = names if args.sample <= 0 or args.sample >= len(names) else \
            sorted(random.Random(args.seed).sample(names, args.sample))
        codes = run_mutmut(workdir, drawn, args.jobs)
        if all(code is None for code in codes.values()):
            print(f"{module:10s} mutmut ran no mutant: do the module's tests pass in {workdir}? "
                  f"(cd there and run: pytest tests/test_{module}.py)", flush=True)
            below_target = True
            continue
        killed = [n for n, c in codes.items() if c in KILLED_CODES]
        survived = sorted(set(drawn) - set(killed))
        score = len(killed) / len(drawn)
        below_target |= score < 0.85
        print(f"{module:10s} {len(killed):4d} / {len(drawn):4d} killed = {score:6.1%}   "
              f"({len(names)} mutants in all)", flush=True)
        for name in survived:
            print(f"    survived: {name} (exit code {codes[name]})")
    return 1 if below_target else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
