"""What a chapter notebook needs around the science: set-up, and progress that leaves no trace.

Every chapter starts with::

    import companion as cp
    cp.notebook.setup()          # plot style, seeds, one CPU thread, torch's slow lazy import done now

and wraps any loop that runs for more than a few seconds::

    for method in cp.notebook.progress(["grpo", "dr_grpo", "dapo"], desc="methods"):
        ...

``cp.lab.train`` shows the same progress line by itself when a run looks longer than a few seconds.

In a notebook the progress line is an HTML output updated in place (no widget, no stderr), cleared when
the loop ends: the saved notebook and the HTML book keep an empty output whose metadata records how long
the loop ran (``tests/test_chapters.py`` checks with it that no cell is silent for long). Elsewhere it is
a tqdm bar on stderr (none when tqdm, from the ``[lab]`` extra, is not installed); under pytest it is silent
unless asked for.
"""

from __future__ import annotations

import html
import os
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

PROGRESS_METADATA = "companion_progress"
"""Key of the output metadata in which a finished progress line records its seconds and description."""

REFRESH_SECONDS = 0.2


def setup(seed: int = 0, threads: int | None = None) -> None:
    """Chapter set-up: the book's plot style, every random seed and CPU threads.

    threads: torch CPU threads; default ``COMPANION_THREADS`` or 1 (tiny models are fastest that way).
    """
    import numpy as np
    import torch

    from companion.lab import thread_count
    from companion.viz import use_style

    use_style()
    torch.set_num_threads(thread_count() if threads is None else threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, the book build's kernels, nbval)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def under_pytest() -> bool:
    return "PYTEST_CURRENT_TEST" in os.environ


class Progress:
    """A progress line over ``total`` steps: ``update()`` after each, ``close()`` at the end.

    Use it as an iterable wrapper (:func:`progress`), a context manager, or by hand. ``started`` (a
    ``time.perf_counter()`` value) backdates the start, for a line opened after the first step.
    """

    def __init__(self, total: int, desc: str = "", *, started: float | None = None) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total, self.desc, self.done = total, desc, 0
        self.started = time.perf_counter() if started is None else started
        self._shown_at = 0.0
        self._handle: Any = None
        self._bar: Any = None
        if in_notebook():
            from IPython.display import display

            self._handle = display(self._bundle(), raw=True, display_id=True)
        else:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm comes with the [lab] extra; without it, no bar
                return
            self._bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self._handle is None:
            return
        now = time.perf_counter()
        if now - self._shown_at >= REFRESH_SECONDS or self.done >= self.total:
            self._shown_at = now
            self._handle.update(self._bundle(), raw=True)

    def close(self) -> None:
        """End the line: a notebook keeps an empty output that records the seconds spent."""
        if self._bar is not None:
            self._bar.close()
        elif self._handle is not None:
            seconds = time.perf_counter() - self.started
            self._handle.update({"text/html": ""}, raw=True,
                                metadata={PROGRESS_METADATA: {"seconds": seconds, "desc": self.desc}})
        self._bar = self._handle = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bundle(self) -> dict[str, str]:
        seconds = time.perf_counter() - self.started
        text = f"{self.desc}: {self.done}/{self.total} ({seconds:.1f} s)" if self.desc else \
            f"{self.done}/{self.total} ({seconds:.1f} s)"
        bar = f'<progress value="{self.done}" max="{max(self.total, 1)}" style="width:12em"></progress>'
        return {"text/html": f'<div class="companion-progress">{bar} {html.escape(text)}</div>',
                "text/plain": text}


def progress(items: Iterable[Any], desc: str = "", total: int | None = None) -> Iterator[Any]:
    """Iterate over ``items`` with a progress line (silent under pytest)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    count = len(items) if total is None else total  # type: ignore[arg-type]
    if under_pytest():
        yield from items
        return
    with Progress(count, desc) as line:
        for item in items:
            yield item
            line.update()
