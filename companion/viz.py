"""Plots and explorers for the book.

One call, two modes::

    cp.viz.explorer(plot_weights, preset=["grpo", "dr_grpo", "dapo"], rho=(-1.0, 1.0, 0.5))

- In a live Jupyter kernel: the title, ipywidgets controls, and the frame as an ordinary image output that
  a control updates in place (``fn`` runs once per new combination, then is cached).
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
    alt: str | Callable[..., str] = ""
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
        if isinstance(self.alt, str):
            try:
                self.alt.format(**self._chosen_labels(tuple(c.default for c in self.controls)))
            except (KeyError, IndexError) as error:
                names = ", ".join("{" + c.name + "}" for c in self.controls)
                message = f"explorer: alt may name the controls ({names}), got {self.alt!r}"
                raise ValueError(message) from error
        elif not callable(self.alt):
            raise TypeError(f"explorer: alt must be a string or a callable, got {type(self.alt).__name__}")

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
        """Every combination, in row-major order of the controls (with a progress line in a notebook)."""
        from companion.notebook import progress

        grid = list(itertools.product(*(range(len(c.values)) for c in self.controls)))
        return {key: self.frame(key) for key in progress(grid, desc="explorer frames")}

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
            "frames": {",".join(map(str, k)): {"kind": f.kind, "data": f.data, "alt": self.describe(k)}
                       for k, f in frames.items()},
            "labels": [list(c.labels) for c in self.controls],
            "names": [c.name for c in self.controls],
        }
        data_json = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
        controls_html = "".join(_control_html(i, c) for i, c in enumerate(self.controls))
        first, alt = frames[default], html.escape(self.describe(default))
        if first.kind == "png":
            view = f'<img class="cpx-frame" style="max-width:100%" alt="{alt}" src="{first.data}"/>'
        else:
            view = f'<div class="cpx-frame" role="group" aria-label="{alt}">{first.data}</div>'
        title = f'<div class="cpx-title">{html.escape(self.title)}</div>' if self.title else ""
        return (
            f'<div class="companion-explorer" id="{uid}" data-n-frames="{len(frames)}">{title}'
            f'<div class="cpx-controls" style="display:flex;flex-wrap:wrap;gap:0.5em 1.5em;margin:0.25em 0">'
            f"{controls_html}</div>"
            f'<div class="cpx-view" aria-live="polite">{view}</div>'
            f'<script type="application/json" class="cpx-data">{data_json}</script>'
            f"<script>{_SCRIPT.replace('__UID__', uid)}</script>"
            f'<div class="cpx-note" style="font-size:0.8em;opacity:0.7">Pre-computed: {len(frames)} frames.'
            " Run the notebook for the live explorer.</div></div>"
        )

    def describe(self, indices: Sequence[int]) -> str:
        """The text alternative of one frame (its ``alt``, read by screen readers): the title, then ``alt``
        (a format string over the controls' labels, or a callable of ``fn``'s arguments), or else the
        settings ("preset=grpo, rho=0.5")."""
        chosen = self._chosen_labels(indices)
        if callable(self.alt):
            text = str(self.alt(**self.params(indices)))
        elif self.alt:
            text = self.alt.format(**chosen)
        else:
            text = ", ".join(f"{name}={label}" for name, label in chosen.items())
        return f"{self.title}: {text}" if self.title else text

    def _chosen_labels(self, indices: Sequence[int]) -> dict[str, str]:
        return {c.name: c.labels[i] for c, i in zip(self.controls, indices, strict=True)}

    # -- live --------------------------------------------------------------------------------------------
    def widget(self) -> Any:
        """The live controls: one ipywidgets control per parameter, in a wrapping row."""
        import ipywidgets as widgets

        controls = [_live_control(c) for c in self.controls]
        return widgets.HBox(controls, layout=widgets.Layout(flex_flow="row wrap"))

    def frame_bundle(self, indices: Sequence[int]) -> dict[str, str]:
        """One frame as a display bundle, with its alt text as the plain-text fallback."""
        frame = self.frame(indices)
        if frame.kind == "png":
            return {"image/png": frame.data.split(",", 1)[1], "text/plain": self.describe(indices)}
        return {"text/html": frame.data, "text/plain": self.describe(indices)}

    def show_live(self) -> None:
        """Title, controls and the current frame as three outputs; the frame is an ordinary image output
        updated in place, so a saved notebook keeps a readable picture after a kernel restart or in a viewer
        without widgets. Images ask JupyterLab's dark theme for a light card, as matplotlib's do."""
        from IPython.display import display

        if self.title:
            display({"text/html": f'<div class="cpx-title"><b>{html.escape(self.title)}</b></div>',
                     "text/plain": self.title}, raw=True)
        box = self.widget()
        view = {**box._repr_mimebundle_(),
                "text/plain": f"[{self.title or 'explorer'}: run the cell in Jupyter for live controls]"}
        display(view, raw=True)
        chosen = [c.default for c in self.controls]
        image = {"needs_background": "light"}
        handle = display(self.frame_bundle(chosen), raw=True, metadata=image, display_id=True)

        def on_change(change: dict[str, Any]) -> None:
            chosen[box.children.index(change["owner"])] = change["new"]
            handle.update(self.frame_bundle(chosen), raw=True, metadata=image)

        for control in box.children:
            control.observe(on_change, names="value")

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        if self.resolved_mode() == "live":
            self.show_live()
        else:
            display(HTML(self.html()))


def explorer(
    fn: Callable[..., Any],
    *,
    title: str = "",
    mode: Literal["auto", "live", "static"] = "auto",
    max_frames: int = 64,
    dpi: int = 90,
    alt: str | Callable[..., str] = "",
    **controls: Any,
) -> Explorer:
    """Explore ``fn(**params)`` over a small grid of parameter values: live in Jupyter, static in the book.

    Controls use ipywidgets' abbreviations (see :func:`as_control`); non-control keyword arguments are
    passed to ``fn`` unchanged. Leave the returned object as the last expression of a cell to show it.
    ``mode="auto"`` is live in a kernel unless the book build set ``COMPANION_BOOK_BUILD``.
    ``alt`` says what a frame shows, for screen readers (the static book's ``<img alt>``): a format string
    over the controls' labels, ``"Per-token weights of {preset}: short completions weigh most"``, or a
    callable of ``fn``'s arguments returning the text; by default the frame's settings.
    """
    parsed, fixed = [], {}
    for name, spec in controls.items():
        control = as_control(name, spec)
        if control is None:
            fixed[name] = spec
        else:
            parsed.append(control)
    return Explorer(fn=fn, controls=tuple(parsed), fixed=fixed, title=title, mode=mode, max_frames=max_frames,
                    dpi=dpi, alt=alt)


def _live_control(control: Control) -> Any:
    import ipywidgets as widgets

    options = [(label, i) for i, label in enumerate(control.labels)]
    named = {"description": control.name, "style": {"description_width": "initial"}}  # never cut the name
    if control.kind == "slider":  # a slider needs room for its track; a drop-down takes what its labels need
        return widgets.SelectionSlider(options=options, value=control.default, continuous_update=False,
                                       layout=widgets.Layout(width="22em", margin="0 1.5em 0 0"), **named)
    return widgets.Dropdown(options=options, value=control.default,
                            layout=widgets.Layout(width="auto", margin="0 1.5em 0 0"), **named)


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
    var key = [];
    for (var i = 0; i < inputs.length; i++) {
      var at = parseInt(inputs[i].value, 10);
      key.push(at);
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
      img.alt = frame.alt;
    } else {
      var box = document.createElement("div");
      box.className = "cpx-frame";
      box.setAttribute("role", "group");
      box.setAttribute("aria-label", frame.alt);
      box.innerHTML = frame.data;
      view.innerHTML = "";
      view.appendChild(box);
    }
  }
  for (var i = 0; i < inputs.length; i++) {
    inputs[i].addEventListener("input", update);
    inputs[i].addEventListener("change", update);
  }
})();"""


# ---------------------------------------------------------------------------------------------------------
# The trie of a group's completions, coloured by W_agg (Prop. 1, App. B.2)


def prefix_tree(nodes: Sequence[Any], *, group: int = 0,
                labels: Sequence[str] | Mapping[int, str] | None = None,
                leaf_labels: Sequence[str] | Mapping[int, str] | None = None, root_label: str = "x",
                ax: Any = None, title: str = "", vmax: float | None = None, digits: int = 3,
                colorbar: bool = True, cmap: str = "BrBG") -> Any:
    """Draw one group's trie (``cp.prefix.trie``), each node coloured by its W_agg and labelled with it.

    nodes: the ``Node`` list of ``cp.prefix.trie`` (nodes of other groups are skipped); group: which group.
    labels: the text of each token id (a sequence indexed by id, e.g. ``(*task.vocab, ".")``, or a mapping);
        None shows the ids. leaf_labels: text after each completion's last node, by row index (e.g. its
        reward); root_label: the prompt node on the left. vmax: the colour scale's ±top (None: the largest
        |W_agg|). digits: decimals of the printed W_agg, which carries the sign and value without colour
        (exactly 0 prints as "0"). The colour map is diverging (brown < 0 < green, white at 0), the edge
        width grows with the number of completions through a node. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize

    shown = _group_nodes(nodes, group)
    if vmax is not None and not (_is_number(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a number > 0 or None, got {vmax!r}")
    if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 12:
        raise ValueError(f"digits must be an int in [0, 12], got {digits!r}")
    token_text = _token_labels(labels, shown)
    leaf_text = _row_labels("leaf_labels", leaf_labels)
    rows = sorted({row for node in shown for row in node.members})
    place = _leaf_positions(shown, rows)
    top = vmax or max((abs(n.w_agg) for n in shown), default=0.0) or 1.0
    norm, colours = Normalize(-top, top), plt.get_cmap(cmap)
    depth = max(n.depth for n in shown) + 1
    if ax is None:
        _, ax = plt.subplots(figsize=(1.1 * depth + 3.2, 0.5 * len(rows) + 0.9))
    ink = plt.rcParams["text.color"]
    y_of = {n.prefix: float(np.mean([place[r] for r in n.members])) for n in shown}
    root_y = float(np.mean(list(place.values())))
    for node in shown:  # edges first, under the nodes
        parent_y = root_y if node.depth == 0 else y_of[node.prefix[:-1]]
        ax.plot([node.depth - 1, node.depth], [parent_y, y_of[node.prefix]], color=ink, alpha=0.45,
                linewidth=0.8 + 1.2 * (len(node.members) - 1) / max(len(rows) - 1, 1), zorder=1)
    ax.text(-1, root_y, root_label, ha="center", va="center", fontsize=9, zorder=3,
            bbox=dict(boxstyle="round,pad=0.3", facecolor="#d9d9d9", edgecolor=ink, linewidth=0.6))
    for node in shown:
        face = colours(norm(node.w_agg))
        text_colour = "white" if _luminance(face) < 0.45 else "black"
        y = y_of[node.prefix]
        ax.text(node.depth, y, token_text(node.prefix[-1]), ha="center", va="center", fontsize=9,
                color=text_colour, zorder=3, fontweight="bold" if node.shared else "normal",
                bbox=dict(boxstyle="round,pad=0.3", facecolor=face, edgecolor=ink, linewidth=0.6))
        ax.text(node.depth, y + 0.3, _signed(node.w_agg, digits), ha="center", va="top", fontsize=6.5,
                color=ink, zorder=3)
        if leaf_text is not None and _is_leaf(node, shown):
            text = ", ".join(dict.fromkeys(leaf_text[r] for r in node.members if r in leaf_text))
            count = f" (×{len(node.members)})" if len(node.members) > 1 else ""
            ax.text(node.depth + 0.35, y, text + count, ha="left", va="center", fontsize=7.5, color=ink)
    ax.set_xlim(-1.5, depth + (1.3 if leaf_text is not None else 0.3))
    ax.set_ylim(len(rows) - 0.3, -0.7)
    ax.set_xticks(range(depth))
    ax.set_xticklabels([str(t + 1) for t in range(depth)])
    ax.set_xlabel("token t")
    ax.set_yticks([])
    ax.grid(False)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=colours)
        bar = ax.figure.colorbar(mappable, ax=ax, fraction=0.04, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("W_agg of the node", fontsize=8)
    return ax


def _group_nodes(nodes: Sequence[Any], group: int) -> list[Any]:
    """The nodes of one group, checked."""
    if isinstance(nodes, str | bytes) or not isinstance(nodes, Sequence) or not nodes:
        raise ValueError("prefix_tree: nodes must be the non-empty list that cp.prefix.trie returns")
    needed = ("group", "depth", "prefix", "members", "w_agg", "shared")
    bad = [type(n).__name__ for n in nodes if not all(hasattr(n, a) for a in needed)]
    if bad:
        raise TypeError(f"prefix_tree: nodes must be cp.prefix.Node objects (from cp.prefix.trie), "
                        f"got {bad[0]}")
    groups = sorted({n.group for n in nodes})
    if group not in groups:
        raise ValueError(f"prefix_tree: group={group!r} is not in the nodes; groups present: {groups}")
    return [n for n in nodes if n.group == group]


def _token_labels(labels: Sequence[str] | Mapping[int, str] | None, nodes: list[Any]) -> Callable[[int], str]:
    ids = {n.prefix[-1] for n in nodes}
    if labels is None:
        return str
    if isinstance(labels, Mapping):
        missing = sorted(ids - set(labels))
        if missing:
            raise ValueError(f"prefix_tree: labels has no text for token id(s) {missing}")
        return lambda i: str(labels[i])
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"prefix_tree: labels must be a sequence indexed by token id or a mapping, "
                        f"got {type(labels).__name__}")
    if max(ids) >= len(labels):
        raise ValueError(f"prefix_tree: labels has {len(labels)} entries but token id {max(ids)} occurs "
                         "(include EOS, e.g. (*task.vocab, '.'))")
    return lambda i: str(labels[i])


def _row_labels(name: str, labels: Sequence[str] | Mapping[int, str] | None) -> dict[int, str] | None:
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        return {int(k): str(v) for k, v in labels.items()}
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"prefix_tree: {name} must be a sequence indexed by row or a mapping row -> text, "
                        f"got {type(labels).__name__}")
    return {i: str(v) for i, v in enumerate(labels)}


def _leaf_positions(nodes: list[Any], rows: list[int]) -> dict[int, float]:
    """Rows in trie order (sorted by their token sequence), one vertical slot each."""
    path = {row: () for row in rows}
    for node in nodes:
        for row in node.members:
            if len(node.prefix) > len(path[row]):
                path[row] = node.prefix
    order = sorted(rows, key=lambda r: (path[r], r))
    return {row: float(i) for i, row in enumerate(order)}


def _is_leaf(node: Any, nodes: list[Any]) -> bool:
    """No node continues this one's prefix (its completions end here)."""
    return not any(n.depth == node.depth + 1 and n.prefix[:-1] == node.prefix for n in nodes)


def _signed(value: float, digits: int) -> str:
    if value == 0:
        return "0"
    text = f"{value:+.{digits}f}"
    return text if float(text) != 0 else f"{value:+.1e}"


def _luminance(rgba: Sequence[float]) -> float:
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
# Light line charts for explorers with many frames: SVG text, no matplotlib (about a millisecond a frame,
# where a matplotlib figure takes a fifth of a second), in the page's text colour (light and dark themes).

DASHES: tuple[str, ...] = ("", "6 3", "2 3", "8 3 2 3", "1 2")
"""SVG stroke-dasharray per series, so that line style, not colour alone, tells the series apart."""


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def svg_lines(series: Mapping[str, Sequence[float]], x: Sequence[float], *, title: str = "",
              xlabel: str = "", ylim: tuple[float, float] | None = None, hline: float | None = None,
              width: int = 250, height: int = 180) -> str:
    """A small line chart as an ``<svg>`` string: one line per entry of ``series`` (y values at ``x``),
    told apart by colour *and* dash pattern, with a legend; ``hline`` draws a dotted reference level.

    ``ylim`` fixes the vertical range (so that frames of an explorer compare); default: the data's range.
    The horizontal ticks are the x values themselves when they are at most ten whole numbers.
    Non-finite values break a line. The chart's ``<title>`` (read by screen readers) is ``title``.
    """
    if not series:
        raise ValueError("svg_lines: give at least one series")
    xs = [float(v) for v in x]
    for label, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"svg_lines: series {label!r} has {len(ys)} values for {len(xs)} x values")
    finite = [float(v) for ys in series.values() for v in ys if math.isfinite(float(v))]
    low, high = ylim if ylim is not None else (min(finite, default=0.0), max(finite, default=1.0))
    high = high if high > low else low + 1.0
    left, right, top, bottom = 38, 8, 18 + 13 * len(series), 30
    plot_w, plot_h = width - left - right, height - top - bottom
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        return top + (1 - (min(max(v, low), high) - low) / (high - low)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" style="font:10px sans-serif;color:inherit">'
             f"<title>{html.escape(title)}</title>",
             f'<text x="{left}" y="11" fill="currentColor">{html.escape(title)}</text>']
    for tick in _nice_ticks(low, high):
        y = py(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="currentColor" stroke-opacity="0.15"/><text x="{left - 4}" y="{y + 3:.1f}" '
                     f'text-anchor="end" fill="currentColor">{tick:g}</text>')
    whole = all(float(v).is_integer() for v in xs)
    xticks = sorted(set(xs)) if whole and len(set(xs)) <= 10 else _nice_ticks(x0, x1, 4)
    for tick in xticks:
        parts.append(f'<text x="{px(tick):.1f}" y="{top + plot_h + 12}" text-anchor="middle" '
                     f'fill="currentColor">{tick:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                 f'fill="currentColor">{html.escape(xlabel)}</text>')
    if hline is not None and low <= hline <= high:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(hline):.1f}" y2="{py(hline):.1f}" '
                     f'stroke="currentColor" stroke-dasharray="1 3"/>')
    for i, (label, ys) in enumerate(series.items()):
        colour, dash = PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)]
        style = f'fill="none" stroke="{colour}" stroke-width="1.8" stroke-dasharray="{dash}"'
        runs, current = [], []
        for xv, yv in zip(xs, ys, strict=True):
            if math.isfinite(float(yv)):
                current.append(f"{px(xv):.1f},{py(float(yv)):.1f}")
            elif current:
                runs.append(current)
                current = []
        runs += [current] if current else []
        parts += [f'<polyline points="{" ".join(run)}" {style}/>' for run in runs]
        y = 16 + 13 * i + 8
        parts.append(f'<line x1="{left}" x2="{left + 22}" y1="{y - 3}" y2="{y - 3}" {style}/>'
                     f'<text x="{left + 27}" y="{y}" fill="currentColor">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
# The training dashboard (chapter 6): what to watch instead of the loss


@dataclass(frozen=True)
class Line:
    """One curve of a dashboard panel: a History column reduced to one value per outer step.

    reduce: ``"first"`` (the first inner step: s = 1, the batch as sampled), ``"last"`` (the last inner step:
    how far the batch moved) or ``"mean"`` (over the inner steps). ``later`` marks a quantity that is trivial
    at the first inner step (π_θ = π_old), hence in every record when μ = 1.
    """

    column: str
    label: str
    reduce: Literal["first", "last", "mean"] = "first"
    later: bool = False


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: its curves, the chapter that explains them, and how to get missing columns."""

    title: str
    lines: tuple[Line, ...]
    ylabel: str
    chapter: str
    hint: str = "train with cp.lab.train, which records it"


_INSTRUMENTED = "train with optimizer=cp.InstrumentedAdamW"

DASHBOARD_PANELS: dict[str, Panel] = {
    "reward": Panel("reward, accuracy", (Line("reward", "reward"), Line("accuracy", "accuracy")),
                    "batch mean", "ch. 1–2"),
    "length": Panel("length", (Line("length", "mean |o_i|"),), "tokens", "ch. 2–3"),
    "loss": Panel("loss at s = 1", (Line("loss", "loss"), Line("policy_loss", "policy part"),
                                    Line("regulariser", "βR")),
                  "first inner step", "ch. 6"),
    "tied": Panel("tied groups", (Line("tied_fraction", "all rewards equal"),), "fraction of groups",
                  "ch. 1–2"),
    "kl": Panel("KL estimates", (Line("kl_ref", "to π_ref"),
                                 Line("kl_old", "to π_old, last step", "last", True)),
                "k3, mean per token", "ch. 5–6"),
    "clip": Panel("clipped tokens", (Line("clip_fraction_low", "below 1−ε (A < 0)", "last", True),
                                     Line("clip_fraction_high", "above 1+ε (A > 0)", "last", True)),
                  "fraction, last inner step", "ch. 2, 5"),
    "ratio": Panel("ratio extremes", (Line("ratio_min", "min π_θ/π_old", "last", True),
                                      Line("ratio_max", "max π_θ/π_old", "last", True)),
                   "last inner step", "ch. 5"),
    "entropy": Panel("entropy", (Line("entropy", "mean per token"),), "nats", "ch. 2"),
    "grad_norm": Panel("gradient norm", (Line("opt_grad_norm", "‖g‖, first inner step"),), "‖g‖",
                       "ch. 4, 6", _INSTRUMENTED),
    "eps": Panel("ε-dominated share", (Line("opt_eps_dominated_frac", "ε ≥ √v̂", "mean"),),
                 "parameters, mean per batch", "ch. 4", _INSTRUMENTED),
    "momentum": Panel("momentum-only share", (Line("opt_momentum_only_frac", "g = 0, m ≠ 0", "mean"),),
                      "parameters, mean per batch", "ch. 5",
                      "train with cp.InstrumentedAdamW(p, diagnostics='full')"),
}
"""The panels of :func:`dashboard`, by key, in the order they are drawn."""

_LINE_STYLES = ("-", "--", ":")


def dashboard(history: Any, panels: Sequence[str] | None = None, *, title: str = "", ncols: int = 4,
              band: bool = True) -> Any:
    """Everything worth watching in a training run, one panel per quantity, against the outer step.

    history: a ``companion.lab.History`` (what ``cp.lab.train`` returns), single- or multi-seed, or a dict
        ``{label: History}`` to compare runs (one colour per run). With several seeds each curve is the mean
        over seeds and a band shows the middle half (25th to 75th percentile).
    panels: keys of ``DASHBOARD_PANELS`` (default: all): reward and accuracy, length, the loss at s = 1
        split into policy part and βR, tied groups, KL to π_ref and to π_old, clip fractions per side,
        ratio extremes, entropy, and, when the run used ``cp.InstrumentedAdamW``, the gradient norm, the
        ε-dominated fraction and the share moved by momentum alone. Each title names the chapter that
        explains the panel.

    A panel whose columns are missing (no InstrumentedAdamW, a cheap diagnostics level) or trivial (μ = 1:
    π_θ = π_old at every record) says so inside the panel instead of drawing. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    runs = _dashboard_runs(history)
    keys = list(DASHBOARD_PANELS) if panels is None else list(panels)
    unknown = [k for k in keys if k not in DASHBOARD_PANELS]
    if unknown or not keys:
        raise ValueError(f"dashboard: panels must be keys of DASHBOARD_PANELS {list(DASHBOARD_PANELS)}, "
                         f"got {unknown or keys}")
    if ncols < 1:
        raise ValueError(f"dashboard: ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(keys) + (len(runs) > 1))
    nrows = math.ceil((len(keys) + (len(runs) > 1)) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.5 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, key in zip(flat, keys, strict=False):
        _draw_panel(ax, DASHBOARD_PANELS[key], runs, band)
    spare = flat[len(keys):]
    if len(runs) > 1:
        _run_legend(spare[0], runs)
        spare = spare[1:]
    for ax in spare:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _dashboard_runs(history: Any) -> dict[str, Any]:
    """A History or {label: History} -> {label: History}, with clear errors for anything else."""
    from companion.lab import History

    if isinstance(history, History):
        runs = {"": history}
    elif isinstance(history, Mapping):
        if not history:
            raise ValueError("dashboard: the dict of runs is empty; give {label: History, ...}")
        runs = dict(history)
        for label, run in runs.items():
            if not isinstance(run, History):
                raise TypeError(f"dashboard: run {label!r} must be a companion.lab.History (what "
                                f"cp.lab.train returns), got {type(run).__name__}")
    else:
        raise TypeError("dashboard: history must be a companion.lab.History (what cp.lab.train returns) or a "
                        f"dict {{label: History}}, got {type(history).__name__}")
    for label, run in runs.items():
        missing = [c for c in ("outer_step", "inner_step") if c not in run]
        if missing or len(run) == 0:
            name = f"run {label!r}" if label else "the History"
            raise ValueError(f"dashboard: {name} has no records per inner step (needs rows and the columns "
                             "outer_step, inner_step that cp.lab.train writes)")
    return runs


def per_batch(history: Any, column: str, reduce: str = "first") -> tuple[Any, Any]:
    """(outer steps, values): ``history[column]`` reduced to one row per outer step (batch).

    reduce: "first" (the first inner step), "last" (the last inner step) or "mean" (over the inner steps).
    Records are in order, one run of rows per outer step, as ``cp.lab.train`` writes them.
    """
    import numpy as np

    if reduce not in ("first", "last", "mean"):
        raise ValueError(f"reduce must be 'first', 'last' or 'mean', got {reduce!r}")
    outer = np.asarray(history["outer_step"])
    values = np.asarray(history[column], dtype=float)
    starts = np.flatnonzero(np.r_[True, outer[1:] != outer[:-1]])
    if reduce == "first":
        return outer[starts], values[starts]
    ends = np.r_[starts[1:], len(outer)]
    if reduce == "last":
        return outer[starts], values[ends - 1]
    counts = (ends - starts).reshape(-1, *([1] * (values.ndim - 1)))
    return outer[starts], np.add.reduceat(values, starts, axis=0) / counts


def _draw_panel(ax: Any, panel: Panel, runs: dict[str, Any], band: bool) -> None:
    """The panel's lines for every run, and a note for what cannot be drawn (under the axis, or centred when
    nothing could be drawn)."""
    import numpy as np

    notes: dict[str, list[str]] = {}  # reason -> runs it applies to
    drawn = 0
    for r, (label, run) in enumerate(runs.items()):
        single_step = int(np.max(run["inner_step"])) == 0
        for j, line in enumerate(panel.lines):
            if line.column not in run:
                reason = f"no column {line.column!r}; {panel.hint}"
            elif line.later and single_step:
                reason = "trivial with one inner step (π_θ = π_old at every record)"
            else:
                x, values = per_batch(run, line.column, line.reduce)
                if not np.all(np.isnan(values)):
                    colour = PALETTE[(r if len(runs) > 1 else j) % len(PALETTE)]
                    _draw_line(ax, x, values, colour, _LINE_STYLES[j % len(_LINE_STYLES)], line.label, band)
                    drawn += 1
                    continue
                reason = f"{line.column} is NaN; {panel.hint}"
            notes.setdefault(reason, [])
            if label not in notes[reason]:
                notes[reason].append(label)
    ax.set_title(f"{panel.title}  ·  {panel.chapter}", fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    text = "\n".join(_wrap(f"{', '.join(who)}: {reason}" if any(who) else reason)
                     for reason, who in notes.items())
    if drawn:
        ax.set_xlabel("outer step" + (f"\n{text}" if text else ""), fontsize=8 if not text else 7)
        if len(panel.lines) > 1:
            _style_legend(ax, multi_run=len(runs) > 1)
    else:
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=7.5,
                color="#8c8c8c")
        ax.set_xticks([])
        ax.set_yticks([])


def _style_legend(ax: Any, multi_run: bool) -> None:
    """One entry per drawn line (by label); grey handles when colours stand for runs."""
    from matplotlib.lines import Line2D

    seen: dict[str, Any] = {}
    for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
        if text not in seen:
            seen[text] = Line2D([], [], color="#8c8c8c", linestyle=handle.get_linestyle()) if multi_run \
                else handle
    ax.legend(seen.values(), seen.keys(), fontsize=6.5, loc="best")


def _draw_line(ax: Any, x: Any, values: Any, colour: str, style: str, label: str, band: bool) -> None:
    import numpy as np

    values = values.reshape(len(values), -1)
    ax.plot(x, np.nanmean(values, 1), color=colour, linestyle=style, label=label, linewidth=1.5)
    if band and values.shape[1] > 1:
        low, high = np.nanpercentile(values, [25, 75], axis=1)
        ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)


def _run_legend(ax: Any, runs: dict[str, Any]) -> None:
    """The spare panel: one colour per run."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=PALETTE[r % len(PALETTE)], linewidth=2.5) for r in range(len(runs))]
    ax.legend(handles, list(runs), loc="center", fontsize=8, title="runs", title_fontsize=8)
    ax.axis("off")


def _wrap(text: str, width: int = 44) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
