"""Plots and explorers for the book.

One call, two modes::

    cp.viz.explorer(plot_weights, preset=["grpo", "dr_grpo", "dapo"], rho=(-1.0, 1.0, 0.5))

- In a live Jupyter kernel it is an ``ipywidgets.interactive``: move a control and ``fn`` runs again.
- When the book is built (``jupyter-book build`` sets ``COMPANION_BOOK_BUILD=1``; see
  ``book/_ext/companion_book.py``), or anywhere without a kernel, every combination of the controls is
  computed once, rendered to a PNG (or HTML) frame, and emitted as self-contained HTML with a tiny
  inline script that swaps frames. It needs no kernel, no network and no require.js.

``fn(**params)`` returns a matplotlib ``Figure`` (or ``Axes``), an HTML string, or any object with
``_repr_html_``. Figures are closed after rendering.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Any, Literal

from companion._extras import require

require("viz", "matplotlib", feature="companion.viz")

BOOK_BUILD_ENV = "COMPANION_BOOK_BUILD"
"""Environment variable set by the book build; explorers then render their static form."""

PALETTE: tuple[str, ...] = ("#3b82c4", "#e69f00", "#2ca58d", "#d55e00", "#a06cc0", "#56b4e9", "#c9a227",
                            "#8c8c8c")
"""Colour cycle readable on white, on the book's dark-mode card and on JupyterLab's dark theme."""

_TEXT_LIGHT_BG = "#4a4a4a"
_TEXT_DARK_BG = "#c8c8c8"


def style(dark: bool = False) -> dict[str, Any]:
    """The book's matplotlib rcParams: transparent background, grey text, a colour-blind-safe cycle.

    Transparent figures sit on whatever the page draws: white in the light theme, the theme's light card
    in the book's dark mode. Pass ``dark=True`` for a dark notebook front end (light grey text).
    """
    from cycler import cycler

    ink = _TEXT_DARK_BG if dark else _TEXT_LIGHT_BG
    return {
        "figure.facecolor": "none",
        "axes.facecolor": "none",
        "savefig.facecolor": "none",
        "savefig.transparent": True,
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 100,
        "font.size": 10,
        "axes.prop_cycle": cycler(color=list(PALETTE)),
        "axes.edgecolor": ink,
        "axes.labelcolor": ink,
        "axes.titlecolor": ink,
        "axes.grid": True,
        "grid.color": ink,
        "grid.alpha": 0.2,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "xtick.color": ink,
        "ytick.color": ink,
        "text.color": ink,
        "legend.frameon": False,
        "lines.linewidth": 1.8,
    }


def use_style(dark: bool = False) -> None:
    """Apply :func:`style` to matplotlib globally (call once at the top of a chapter)."""
    import matplotlib as mpl

    mpl.rcParams.update(style(dark))


# ---------------------------------------------------------------------------------------------------------
# Training curves


def plot_runs(runs: Mapping[str, Any], columns: Sequence[str] = ("reward", "length"), *,
              axes: Sequence[Any] | None = None, band: bool = True, width: float = 3.2) -> Any:
    """One panel per History column, one line per run: the mean over seeds at each outer step.

    ``runs`` maps a label to a ``companion.lab.History``; with several seeds a band shows the middle half
    (25th to 75th percentile) across seeds. Returns the Figure (pass ``axes`` to draw into your own).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if not runs:
        raise ValueError("plot_runs: give at least one run")
    if axes is None:
        fig, axes = plt.subplots(1, len(columns), figsize=(width * len(columns), 2.8), squeeze=False)
        axes = axes[0]
    else:
        fig = axes[0].figure
    if len(axes) != len(columns):
        raise ValueError(f"plot_runs: {len(columns)} columns need {len(columns)} axes, got {len(axes)}")
    for ax, column in zip(axes, columns, strict=True):
        for label, history in runs.items():
            values = np.asarray(history.outer(column), dtype=float)
            values = values.reshape(len(values), -1)
            steps = np.arange(len(values))
            (line,) = ax.plot(steps, values.mean(1), label=label)
            if band and values.shape[1] > 1:
                low, high = np.percentile(values, [25, 75], axis=1)
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_xlabel("outer step")
        ax.set_ylabel(column)
    axes[-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# Per-token pictures


def _as_array(name: str, values: Any) -> Any:
    """A tensor (detached, on CPU), an array or nested lists -> a 2-D float numpy array."""
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (completions, tokens), got shape {array.shape}")
    return array


def token_heatmap(values: Any, mask: Any = None, *, ax: Any = None, title: str = "",
                  signed: bool | None = None, vmax: float | None = None, group_size: int | None = None,
                  row_labels: Sequence[str] | None = None, colorbar: bool = True, cmap: str | None = None,
                  label: str = "") -> Any:
    """A per-token quantity over (completion, token) as a heatmap; tokens outside the loss are left blank.

    values: (N, T) tensor or array, e.g. ``out.weights`` (the ω of Eq. 15) or ``out.weights * adv[:, None]``.
    mask: (N, T), 1 on the tokens in the loss (None: every cell is drawn).
    signed: a diverging map centred on 0 (brown < 0 < green); None picks it when a value is negative.
    vmax: the colour scale's top (signed: ±vmax); None uses the largest |value| on the mask.
    group_size: draws a line between consecutive groups of that many rows.
    row_labels: one label per completion (e.g. ``"r=1, |o|=3"``). label: the colour bar's label.
    Returns the Axes (a new figure when ``ax`` is None).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    data = _as_array("values", values)
    keep = np.ones_like(data, dtype=bool) if mask is None else _as_array("mask", mask) != 0
    if keep.shape != data.shape:
        raise ValueError(f"mask has shape {keep.shape}, values {data.shape}")
    n, horizon = data.shape
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels: need one per completion ({n}), got {len(row_labels)}")
    if group_size is not None and (group_size < 1 or n % group_size):
        raise ValueError(f"group_size={group_size} must divide the number of completions {n}")
    shown = np.ma.masked_where(~keep, data)
    top = float(np.abs(shown).max()) if keep.any() else 0.0
    top = vmax if vmax is not None else (top or 1.0)
    if signed is None:
        signed = bool((shown < 0).any())
    colours = plt.get_cmap(cmap or ("BrBG" if signed else "viridis")).with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    low = -top if signed else min(0.0, float(shown.min()) if keep.any() else 0.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.35 * horizon + 1.6, 0.28 * n + 0.9))
    image = ax.imshow(shown, cmap=colours, vmin=low, vmax=top, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(horizon))
    ax.set_xticklabels([str(t + 1) if (t % 2 == 0 or horizon <= 12) else "" for t in range(horizon)])
    ax.set_xlabel("token t")
    ax.set_yticks(range(n))
    ax.set_yticklabels(row_labels if row_labels is not None else [str(i + 1) for i in range(n)])
    ax.grid(False)
    if group_size is not None:
        for boundary in range(group_size, n, group_size):
            ax.axhline(boundary - 0.5, color="#8c8c8c", linewidth=1.2)
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        if label:
            bar.set_label(label, fontsize=8)
    return ax


def clip_fractions(outputs: Mapping[str, Any], *, ax: Any = None, title: str = "") -> Any:
    """Stacked bars of the clip fractions of several loss outputs: below 1−ε_low, above 1+ε_up, dual clip.

    ``outputs`` maps a label to a ``LossOutput`` (anything with ``clip_fraction_low``, ``clip_fraction_high``
    and ``clip_fraction_dual``: tensors or floats). Returns the Axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if not outputs:
        raise ValueError("clip_fractions: give at least one loss output")
    labels = list(outputs)
    parts = {"below 1−ε_low (A < 0)": "clip_fraction_low", "above 1+ε_up (A > 0)": "clip_fraction_high",
             "dual clip (A < 0)": "clip_fraction_dual"}
    if ax is None:
        _, ax = plt.subplots(figsize=(0.8 * len(labels) + 2.0, 2.8))
    bottom = np.zeros(len(labels))
    for part, attribute in parts.items():
        heights = np.array([float(getattr(outputs[k], attribute)) for k in labels])
        if part.startswith("dual") and not heights.any():
            continue
        ax.bar(labels, heights, bottom=bottom, label=part)
        bottom += heights
    ax.set_ylabel("fraction of tokens clipped")
    ax.set_ylim(0, max(1.0, float(bottom.max()) * 1.05))
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


# ---------------------------------------------------------------------------------------------------------
# Controls


@dataclass(frozen=True)
class Control:
    """One explorer control: a finite list of values, shown as a slider or a drop-down."""

    values: tuple[Any, ...]
    kind: Literal["slider", "select"]
    labels: tuple[str, ...] = ()
    default: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise ValueError(f"control {self.name or '?'!r}: values must not be empty")
        if self.kind not in ("slider", "select"):
            raise ValueError(
                f"control {self.name or '?'!r}: kind must be 'slider' or 'select', got {self.kind!r}"
            )
        if not self.labels:
            object.__setattr__(self, "labels", tuple(_label(v) for v in self.values))
        if len(self.labels) != len(self.values):
            raise ValueError(f"control {self.name or '?'!r}: labels and values differ in length")
        if not 0 <= self.default < len(self.values):
            raise ValueError(f"control {self.name or '?'!r}: default index {self.default} out of range")


def slider(values: Sequence[Any], default: Any = None) -> Control:
    """A slider over exactly these values (the static book shows one frame per value)."""
    values = tuple(values)
    return Control(values=values, kind="slider", default=_index_of(values, default))


def dropdown(options: Sequence[Any] | Mapping[str, Any], default: Any = None) -> Control:
    """A drop-down; a mapping gives ``{label: value}``."""
    if isinstance(options, Mapping):
        labels, values = tuple(str(k) for k in options), tuple(options.values())
        return Control(values=values, kind="select", labels=labels, default=_index_of(values, default))
    values = tuple(options)
    return Control(values=values, kind="select", default=_index_of(values, default))


def as_control(name: str, spec: Any) -> Control | None:
    """Read an ipywidgets-style abbreviation; ``None`` means a fixed argument, not a control.

    - ``(lo, hi, step)``: a slider over ``lo, lo + step, ..., hi`` (inclusive);
    - a list of numbers: a slider over those values; any other list: a drop-down;
    - a dict ``{label: value}``: a drop-down; a :class:`Control`: used as is;
    - anything else (a number, a string): passed to ``fn`` unchanged.
    """
    if isinstance(spec, Control):
        return replace(spec, name=name)
    if isinstance(spec, tuple) and len(spec) == 3 and all(_is_number(x) for x in spec):
        return replace(slider(_inclusive_range(name, *spec)), name=name)
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"control {name!r}: the list of values is empty")
        make = slider if all(_is_number(x) for x in spec) else dropdown
        return replace(make(spec), name=name)
    if isinstance(spec, Mapping):
        return replace(dropdown(spec), name=name)
    if isinstance(spec, tuple):
        raise ValueError(f"control {name!r}: a tuple must be (lo, hi, step) of numbers, got {spec!r}")
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _inclusive_range(name: str, lo: float, hi: float, step: float) -> list[float]:
    if not step > 0:
        raise ValueError(f"control {name!r}: step must be > 0, got {step}")
    if hi < lo:
        raise ValueError(f"control {name!r}: hi ({hi}) must be >= lo ({lo})")
    n = math.floor((hi - lo) / step + 1e-9) + 1
    values = [round(lo + i * step, 12) for i in range(n)]
    if all(float(v).is_integer() for v in (lo, hi, step)):
        return [int(v) for v in values]
    return values


def _index_of(values: tuple[Any, ...], default: Any) -> int:
    if default is None:
        return 0
    for i, v in enumerate(values):
        if v == default:
            return i
    raise ValueError(f"default {default!r} is not one of the values {values!r}")


def _label(value: Any) -> str:
    if _is_number(value):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class Frame:
    """One rendered result: a PNG as a data URI, or an HTML fragment."""

    kind: Literal["png", "html"]
    data: str


def render(result: Any, dpi: int = 90) -> Frame:
    """Turn what ``fn`` returned into a :class:`Frame` (figures are closed afterwards)."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    if isinstance(result, Axes):
        result = result.figure
    if isinstance(result, Figure):
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        result.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(result)
        return Frame("png", "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    if isinstance(result, str):
        return Frame("html", result)
    if hasattr(result, "_repr_html_"):
        return Frame("html", result._repr_html_())
    raise TypeError(
        "explorer: fn must return a matplotlib Figure or Axes, an HTML string, or an object with _repr_html_;"
        f" got {type(result).__name__}"
    )


# ---------------------------------------------------------------------------------------------------------
# The explorer


@dataclass
class Explorer:
    """A function of a few discrete parameters, shown live (ipywidgets) or pre-computed (static HTML)."""

    fn: Callable[..., Any]
    controls: tuple[Control, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    mode: Literal["auto", "live", "static"] = "auto"
    max_frames: int = 64
    dpi: int = 90
    _cache: dict[tuple[int, ...], Frame] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"explorer: fn must be callable, got {type(self.fn).__name__}")
        if not self.controls:
            raise ValueError("explorer: give at least one control (a list, a dict or a (lo, hi, step) tuple)")
        if self.mode not in ("auto", "live", "static"):
            raise ValueError(f"explorer: mode must be 'auto', 'live' or 'static', got {self.mode!r}")
        if self.n_frames > self.max_frames:
            raise ValueError(
                f"explorer: {self.n_frames} combinations exceed max_frames={self.max_frames};"
                " use fewer values per control or raise max_frames"
            )

    @property
    def n_frames(self) -> int:
        return math.prod(len(c.values) for c in self.controls)

    def params(self, indices: Sequence[int]) -> dict[str, Any]:
        """Keyword arguments of ``fn`` for one combination of control indices."""
        chosen = {c.name: c.values[i] for c, i in zip(self.controls, indices, strict=True)}
        return {**self.fixed, **chosen}

    def frame(self, indices: Sequence[int]) -> Frame:
        """The rendered result for one combination (computed once, then cached)."""
        key = tuple(indices)
        if key not in self._cache:
            self._cache[key] = render(self.fn(**self.params(key)), dpi=self.dpi)
        return self._cache[key]

    def frames(self) -> dict[tuple[int, ...], Frame]:
        """Every combination, in row-major order of the controls."""
        grid = itertools.product(*(range(len(c.values)) for c in self.controls))
        return {key: self.frame(key) for key in grid}

    def resolved_mode(self) -> Literal["live", "static"]:
        if self.mode != "auto":
            return self.mode
        if os.environ.get(BOOK_BUILD_ENV):
            return "static"
        return "live" if _in_kernel() else "static"

    # -- static ------------------------------------------------------------------------------------------
    def html(self) -> str:
        """Self-contained HTML: controls, the default frame, every frame as data, and a small script."""
        frames = self.frames()
        uid = "cpx-" + hashlib.sha1(
            "".join(f.data for f in frames.values()).encode() + str(_next_serial()).encode()
        ).hexdigest()[:12]
        default = tuple(c.default for c in self.controls)
        payload = {
            "frames": {",".join(map(str, k)): {"kind": f.kind, "data": f.data} for k, f in frames.items()},
            "labels": [list(c.labels) for c in self.controls],
            "names": [c.name for c in self.controls],
        }
        data_json = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
        controls_html = "".join(_control_html(i, c) for i, c in enumerate(self.controls))
        first = frames[default]
        view = (
            f'<img class="cpx-frame" style="max-width:100%" alt="{html.escape(self._alt(default))}"'
            f' src="{first.data}"/>'
            if first.kind == "png" else f'<div class="cpx-frame">{first.data}</div>'
        )
        title = f'<div class="cpx-title">{html.escape(self.title)}</div>' if self.title else ""
        return (
            f'<div class="companion-explorer" id="{uid}" data-n-frames="{len(frames)}">{title}'
            f'<div class="cpx-controls" style="display:flex;flex-wrap:wrap;gap:0.5em 1.5em;margin:0.25em 0">'
            f"{controls_html}</div>"
            f'<div class="cpx-view">{view}</div>'
            f'<script type="application/json" class="cpx-data">{data_json}</script>'
            f"<script>{_SCRIPT.replace('__UID__', uid)}</script>"
            f'<div class="cpx-note" style="font-size:0.8em;opacity:0.7">Pre-computed: {len(frames)} frames.'
            " Run the notebook for the live explorer.</div></div>"
        )

    def _alt(self, indices: Sequence[int]) -> str:
        chosen = ", ".join(f"{c.name}={c.labels[i]}" for c, i in zip(self.controls, indices, strict=True))
        return f"{self.title}: {chosen}" if self.title else chosen

    # -- live --------------------------------------------------------------------------------------------
    def widget(self) -> Any:
        """An ``ipywidgets.interactive`` over the same values (each result cached after its first run)."""
        import ipywidgets as widgets
        from IPython.display import HTML, Image, display

        def show(**chosen_indices: int) -> None:
            frame = self.frame([chosen_indices[c.name] for c in self.controls])
            if frame.kind == "png":
                display(Image(data=base64.b64decode(frame.data.split(",", 1)[1])))
            else:
                display(HTML(frame.data))

        kwargs = {c.name: _live_control(c) for c in self.controls}
        return widgets.interactive(show, **kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        if self.resolved_mode() == "live":
            display(self.widget())
        else:
            display(HTML(self.html()))


def explorer(
    fn: Callable[..., Any],
    *,
    title: str = "",
    mode: Literal["auto", "live", "static"] = "auto",
    max_frames: int = 64,
    dpi: int = 90,
    **controls: Any,
) -> Explorer:
    """Explore ``fn(**params)`` over a small grid of parameter values: live in Jupyter, static in the book.

    Controls use ipywidgets' abbreviations (see :func:`as_control`); non-control keyword arguments are
    passed to ``fn`` unchanged. Leave the returned object as the last expression of a cell to show it.
    ``mode="auto"`` is live in a kernel unless the book build set ``COMPANION_BOOK_BUILD``.
    """
    parsed, fixed = [], {}
    for name, spec in controls.items():
        control = as_control(name, spec)
        if control is None:
            fixed[name] = spec
        else:
            parsed.append(control)
    return Explorer(fn=fn, controls=tuple(parsed), fixed=fixed, title=title, mode=mode, max_frames=max_frames,
                    dpi=dpi)


def _live_control(control: Control) -> Any:
    import ipywidgets as widgets

    options = [(label, i) for i, label in enumerate(control.labels)]
    if control.kind == "slider":
        return widgets.SelectionSlider(options=options, value=control.default, description=control.name,
                                       continuous_update=False)
    return widgets.Dropdown(options=options, value=control.default, description=control.name)


def _control_html(position: int, control: Control) -> str:
    name = html.escape(control.name)
    if control.kind == "slider":
        return (
            f'<label class="cpx-control">{name} '
            f'<input type="range" min="0" max="{len(control.values) - 1}" step="1" value="{control.default}"'
            f' data-control="{position}" aria-label="{name}"/>'
            f' <output>{html.escape(control.labels[control.default])}</output></label>'
        )
    options = "".join(
        f'<option value="{i}"{" selected" if i == control.default else ""}>{html.escape(label)}</option>'
        for i, label in enumerate(control.labels)
    )
    return f'<label class="cpx-control">{name} <select data-control="{position}">{options}</select></label>'


_SERIAL = itertools.count()


def _next_serial() -> int:
    return next(_SERIAL)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


# Swaps frames when a control changes. No network, no libraries; scoped to its own container.
_SCRIPT = """(function () {
  var root = document.getElementById("__UID__");
  if (!root) { return; }
  var data = JSON.parse(root.querySelector("script.cpx-data").textContent);
  var inputs = root.querySelectorAll("[data-control]");
  var view = root.querySelector(".cpx-view");
  function update() {
    var key = [], alt = [];
    for (var i = 0; i < inputs.length; i++) {
      var at = parseInt(inputs[i].value, 10);
      key.push(at);
      alt.push(data.names[i] + "=" + data.labels[i][at]);
      var out = inputs[i].parentNode.querySelector("output");
      if (out) { out.textContent = data.labels[i][at]; }
    }
    var frame = data.frames[key.join(",")];
    if (!frame) { return; }
    if (frame.kind === "png") {
      var img = view.querySelector("img.cpx-frame");
      if (!img) { view.innerHTML = ""; img = document.createElement("img"); img.className = "cpx-frame";
                  img.style.maxWidth = "100%";
                  view.appendChild(img); }
      img.src = frame.data;
      img.alt = alt.join(", ");
    } else {
      view.innerHTML = '<div class="cpx-frame">' + frame.data + "</div>";
    }
  }
  for (var i = 0; i < inputs.length; i++) {
    inputs[i].addEventListener("input", update);
    inputs[i].addEventListener("change", update);
  }
})();"""
