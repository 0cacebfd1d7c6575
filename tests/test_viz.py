"""companion.viz: controls, frames, the static explorer's HTML, the live widget, the mode switch."""

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from companion import viz


def bar_chart(height: float, colour: str, offset: float = 0.0):
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.bar([0], [height + offset], color=colour)
    ax.set_ylim(0, 4)
    return fig


def data_of(html: str) -> dict:
    match = re.search(r'<script type="application/json" class="cpx-data">(.*?)</script>', html, re.S)
    assert match, "the static explorer must embed its frames as JSON"
    return json.loads(match.group(1).replace("<\\/", "</"))


# ---------------------------------------------------------------------------------------------------------
# controls


def test_tuple_is_an_inclusive_slider():
    control = viz.as_control("x", (0.0, 1.0, 0.25))
    assert control.kind == "slider"
    assert control.values == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert control.labels == ("0", "0.25", "0.5", "0.75", "1")


def test_integer_tuple_gives_integers():
    assert viz.as_control("n", (2, 8, 2)).values == (2, 4, 6, 8)


def test_lists_and_dicts():
    assert viz.as_control("n", [1, 2, 4]).kind == "slider"
    assert viz.as_control("m", ["a", "b"]).kind == "select"
    control = viz.as_control("m", {"Dr GRPO": "dr_grpo", "DAPO": "dapo"})
    assert control.kind == "select"
    assert control.labels == ("Dr GRPO", "DAPO")
    assert control.values == ("dr_grpo", "dapo")


def test_scalars_are_fixed_arguments():
    assert viz.as_control("beta", 0.04) is None
    assert viz.as_control("name", "grpo") is None


def test_defaults_and_bad_controls():
    assert viz.slider([1, 2, 3], default=2).default == 1
    with pytest.raises(ValueError, match="default"):
        viz.slider([1, 2, 3], default=5)
    with pytest.raises(ValueError, match="step"):
        viz.as_control("x", (0, 1, 0))
    with pytest.raises(ValueError, match="empty"):
        viz.as_control("x", [])
    with pytest.raises(ValueError, match="'x'"):
        viz.as_control("x", (1, 2))


def test_too_many_frames_is_refused():
    with pytest.raises(ValueError, match="max_frames"):
        viz.explorer(bar_chart, height=list(range(10)), colour=["C0"] * 10, max_frames=64)


def test_explorer_needs_a_control_and_a_callable():
    with pytest.raises(ValueError, match="control"):
        viz.explorer(bar_chart, height=1.0, colour="C0")
    with pytest.raises(TypeError, match="callable"):
        viz.explorer("not a function", height=[1, 2])


# ---------------------------------------------------------------------------------------------------------
# frames and the static HTML


def test_render_closes_figures_and_rejects_other_types():
    before = len(plt.get_fignums())
    frame = viz.render(bar_chart(1.0, "C0"))
    assert frame.kind == "png"
    assert base64.b64decode(frame.data.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plt.get_fignums()) == before
    assert viz.render("<b>hi</b>") == viz.Frame("html", "<b>hi</b>")
    with pytest.raises(TypeError, match="Figure"):
        viz.render(42)


def test_static_html_holds_every_frame_once():
    calls = []

    def recorded(height, colour, offset):
        calls.append((height, colour, offset))
        return bar_chart(height, colour, offset)

    explorer = viz.explorer(recorded, height=[1, 2, 3], colour={"blue": "C0", "orange": "C1"}, offset=0.5,
                            mode="static", title="bars")
    html = explorer.html()
    data = data_of(html)
    assert sorted(calls) == sorted((h, c, 0.5) for h in (1, 2, 3) for c in ("C0", "C1"))
    assert set(data["frames"]) == {f"{i},{j}" for i in range(3) for j in range(2)}
    assert data["labels"] == [["1", "2", "3"], ["blue", "orange"]]
    assert data["names"] == ["height", "colour"]
    # every frame is a real, distinct PNG, and each one is in the page
    images = [frame["data"] for frame in data["frames"].values()]
    assert len(set(images)) == 6
    for image in images:
        assert image.startswith("data:image/png;base64,")
        assert image in html
    # the default frame (first value of each control) is shown before any script runs
    assert f'src="{data["frames"]["0,0"]["data"]}"' in html
    # controls: a range input over the three heights, a select with two options
    assert '<input type="range" min="0" max="2" step="1" value="0" data-control="0"' in html
    assert html.count("<option ") == 2


def test_static_html_is_offline_and_self_contained():
    html = viz.explorer(bar_chart, height=[1, 2], colour=["C0"], mode="static").html()
    without_frames = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "http://" not in without_frames and "https://" not in without_frames
    assert "//cdn" not in without_frames
    assert "require(" not in without_frames and "requirejs" not in without_frames
    assert "<script src" not in without_frames
    # the script is scoped to its own container id
    uid = re.search(r'class="companion-explorer" id="(cpx-[0-9a-f]{12})"', html).group(1)
    assert f'document.getElementById("{uid}")' in html


def test_two_explorers_on_one_page_get_distinct_ids():
    first = viz.explorer(bar_chart, height=[1, 2], colour=["C0"], mode="static").html()
    second = viz.explorer(bar_chart, height=[1, 2], colour=["C0"], mode="static").html()
    pattern = r'class="companion-explorer" id="(cpx-[0-9a-f]{12})"'
    assert re.search(pattern, first).group(1) != re.search(pattern, second).group(1)


def test_html_frames_cannot_close_the_data_script():
    def table(n):
        return f"<table><tr><td>{n}</td></tr></table><script>var x = 1;</script>"

    html = viz.explorer(table, n=[1, 2], mode="static").html()
    payload = re.search(r'class="cpx-data">(.*?)</script>', html, re.S).group(1)
    assert "</script>" not in payload
    assert data_of(html)["frames"]["1"]["data"].startswith("<table><tr><td>2</td>")


# ---------------------------------------------------------------------------------------------------------
# modes and the live widget


def test_mode_follows_the_book_build_variable(monkeypatch):
    explorer = viz.explorer(bar_chart, height=[1, 2], colour=["C0"])
    monkeypatch.setenv(viz.BOOK_BUILD_ENV, "1")
    assert explorer.resolved_mode() == "static"
    monkeypatch.delenv(viz.BOOK_BUILD_ENV)
    assert explorer.resolved_mode() == "static"  # no kernel in pytest
    monkeypatch.setattr(viz, "_in_kernel", lambda: True)
    assert explorer.resolved_mode() == "live"
    monkeypatch.setenv(viz.BOOK_BUILD_ENV, "1")
    assert explorer.resolved_mode() == "static"
    assert viz.explorer(bar_chart, height=[1, 2], colour=["C0"], mode="live").resolved_mode() == "live"


def test_live_widget_uses_the_same_values_and_caches():
    calls = []

    def counted(height, colour):
        calls.append(height)
        return bar_chart(height, colour)

    explorer = viz.explorer(counted, height=(1, 3, 1), colour={"blue": "C0", "orange": "C1"}, mode="live")
    widget = explorer.widget()
    sliders = {child.description: child for child in widget.children[:-1]}
    assert type(sliders["height"]).__name__ == "SelectionSlider"
    assert [label for label, _ in sliders["height"].options] == ["1", "2", "3"]
    assert type(sliders["colour"]).__name__ == "Dropdown"
    assert calls == [1]  # interactive runs fn once for the default values
    sliders["height"].value = 2
    sliders["height"].value = 0
    assert calls == [1, 3]  # returning to the default reuses the cached frame
    assert len(explorer.frames()) == 6


def test_style_is_transparent_and_uses_the_palette():
    rc = viz.style()
    assert rc["savefig.transparent"] is True
    assert rc["figure.facecolor"] == "none"
    assert rc["axes.prop_cycle"].by_key()["color"] == list(viz.PALETTE)
    assert viz.style(dark=True)["text.color"] != rc["text.color"]


# ---------------------------------------------------------------------------------------------------------
# per-token pictures (chapter 2)


def test_token_heatmap_blanks_padding_and_centres_signed_values():
    import numpy as np
    import torch

    values = torch.tensor([[0.5, -0.25, 9.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ax = viz.token_heatmap(values, mask, title="w", group_size=1, row_labels=["a", "b"], label="ω")
    image = ax.get_images()[0]
    shown = image.get_array()
    assert np.ma.is_masked(shown) and bool(shown.mask[0, 2]) and not shown.mask[1].any()
    assert image.get_clim() == (-3.0, 3.0)  # signed: symmetric, the padded 9.0 ignored
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert ax.get_title() == "w" and len(ax.figure.axes) == 2  # the colour bar
    assert len(ax.get_lines()) == 1  # one group boundary
    plt.close(ax.figure)


def test_token_heatmap_unsigned_scale_and_bad_input():
    import numpy as np

    fig, ax = plt.subplots()
    out = viz.token_heatmap(np.array([[0.1, 0.4]]), ax=ax, colorbar=False, vmax=1.0)
    assert out is ax and out.get_images()[0].get_clim() == (0.0, 1.0) and len(fig.axes) == 1
    with pytest.raises(ValueError, match="2-D"):
        viz.token_heatmap(np.zeros(3), ax=ax)
    with pytest.raises(ValueError, match="mask"):
        viz.token_heatmap(np.zeros((2, 3)), np.ones((2, 2)), ax=ax)
    with pytest.raises(ValueError, match="row_labels"):
        viz.token_heatmap(np.zeros((2, 3)), row_labels=["x"], ax=ax)
    with pytest.raises(ValueError, match="group_size"):
        viz.token_heatmap(np.zeros((3, 3)), group_size=2, ax=ax)
    plt.close(fig)


def test_clip_fractions_stacks_the_parts():
    from types import SimpleNamespace

    outputs = {"a": SimpleNamespace(clip_fraction_low=0.1, clip_fraction_high=0.2, clip_fraction_dual=0.0),
               "b": SimpleNamespace(clip_fraction_low=0.0, clip_fraction_high=0.5, clip_fraction_dual=0.0)}
    ax = viz.clip_fractions(outputs, title="clips")
    bars = ax.patches
    assert len(bars) == 4  # low and high for two outputs; the all-zero dual clip is left out
    assert [round(b.get_height(), 6) for b in bars] == [0.1, 0.0, 0.2, 0.5]
    assert [round(b.get_y(), 6) for b in bars] == [0.0, 0.0, 0.1, 0.0]
    assert ax.get_title() == "clips"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="at least one"):
        viz.clip_fractions({})


# ---------------------------------------------------------------------------------------------------------
# the training dashboard (chapter 6)


def _dashboard_run(seeds=3, inner_steps=2, optimizer="full"):
    """A real lab run (tabular, fp64): InstrumentedAdamW at a diagnostics level, or torch's AdamW (None)."""
    import torch

    import companion as cp

    task = cp.make_task("pick", length="short")
    policy = cp.TabularPolicy.for_task(task, num_seeds=seeds, dtype=torch.float64)
    make = None if optimizer is None else (lambda p: cp.InstrumentedAdamW(p, lr=0.1, diagnostics=optimizer))
    return cp.lab.train(policy, task, cp.Objective.preset("grpo_r1"), optimizer=make, lr=0.1, steps=5,
                        inner_steps=inner_steps, device="cpu")


def _texts(fig):
    """Every piece of text on the figure's axes (titles, labels, notes)."""
    found = []
    for ax in fig.axes:
        found += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
    return "\n".join(found)


def _panel(fig, key):
    return next(ax for ax in fig.axes if ax.get_title().startswith(viz.DASHBOARD_PANELS[key].title))


@pytest.fixture(scope="module")
def full_run():
    return _dashboard_run()


def test_dashboard_draws_every_panel_of_a_full_run_with_seed_bands(full_run):
    import numpy as np
    from matplotlib.collections import PolyCollection

    fig = viz.dashboard(full_run, title="a run")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == len(viz.DASHBOARD_PANELS) == 11
    assert "no column" not in _texts(fig) and "trivial" not in _texts(fig) and "NaN" not in _texts(fig)
    for key, panel in viz.DASHBOARD_PANELS.items():
        ax = _panel(fig, key)
        assert len(ax.get_lines()) == len(panel.lines), key
        assert panel.chapter in ax.get_title()
    reward = _panel(fig, "reward")
    np.testing.assert_allclose(reward.get_lines()[0].get_ydata(), full_run.outer("reward").mean(1))
    assert any(isinstance(c, PolyCollection) for c in reward.collections)  # the band across seeds
    ratio = _panel(fig, "ratio").get_lines()[1].get_ydata()  # the last inner step of every batch
    np.testing.assert_allclose(ratio, full_run["ratio_max"][1::2].mean(1))
    assert np.all(full_run["ratio_max"][0::2] == 1.0) and np.all(ratio > 1.0)  # s = 1 at the first step
    eps = _panel(fig, "eps").get_lines()[0].get_ydata()  # optimizer columns: mean over the batch's steps
    np.testing.assert_allclose(eps, full_run["opt_eps_dominated_frac"].reshape(-1, 2).mean(1))
    assert fig._suptitle.get_text() == "a run"
    plt.close(fig)


def test_dashboard_on_one_seed_and_on_a_subset_of_panels(full_run):
    from matplotlib.collections import PolyCollection

    one = full_run.seed(1)
    fig = viz.dashboard(one, panels=["reward", "loss", "kl"], ncols=3)
    assert len(fig.axes) == 3
    assert not any(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections)  # no band
    loss = _panel(fig, "loss").get_lines()[0].get_ydata()
    assert list(loss) == list(one.outer("loss"))
    plt.close(fig)


def test_dashboard_says_what_it_cannot_draw():
    plain = _dashboard_run(seeds=2, optimizer=None)  # torch's AdamW: no opt_* columns
    fig = viz.dashboard(plain)
    for key in ("grad_norm", "eps", "momentum"):
        ax = _panel(fig, key)
        assert not ax.get_lines() and "InstrumentedAdamW" in " ".join(t.get_text() for t in ax.texts), key
    plt.close(fig)
    cheap = _dashboard_run(seeds=2, optimizer="cheap")  # momentum_only_frac needs the full level
    ax = _panel(viz.dashboard(cheap), "momentum")
    assert "NaN" in ax.texts[0].get_text() and "diagnostics='full'" in ax.texts[0].get_text()
    plt.close("all")
    single = _dashboard_run(seeds=2, inner_steps=1)  # mu = 1: ratios, clips and KL to pi_old are trivial
    fig = viz.dashboard(single)
    for key in ("clip", "ratio"):
        assert "one inner step" in _panel(fig, key).texts[0].get_text(), key
    kl = _panel(fig, "kl")
    assert len(kl.get_lines()) == 1 and "one inner step" in kl.get_xlabel()  # pi_ref drawn, pi_old noted
    plt.close(fig)


def test_dashboard_compares_runs_with_one_colour_each(full_run):
    other = _dashboard_run(seeds=2, inner_steps=1)
    fig = viz.dashboard({"mu = 2": full_run, "mu = 1": other})
    legend = next(ax for ax in fig.axes
                  if ax.get_legend() and ax.get_legend().get_title().get_text() == "runs")
    assert [t.get_text() for t in legend.get_legend().get_texts()] == ["mu = 2", "mu = 1"]
    reward = _panel(fig, "reward").get_lines()
    assert reward[0].get_color() == reward[1].get_color() != reward[2].get_color()  # colour = run
    assert reward[0].get_linestyle() != reward[1].get_linestyle()  # style = column
    assert "mu = 1: trivial" in _panel(fig, "clip").get_xlabel()
    plt.close(fig)


def test_dashboard_rejects_what_is_not_a_history(full_run):
    import numpy as np

    from companion.lab import History
    from companion.optim import History as OptimizerHistory

    for bad in (None, {"reward": np.zeros(3)}, OptimizerHistory(), [full_run]):
        with pytest.raises(TypeError, match="History"):
            viz.dashboard(bad)
    with pytest.raises(ValueError, match="empty"):
        viz.dashboard({})
    with pytest.raises(ValueError, match="panels"):
        viz.dashboard(full_run, panels=["reward", "nope"])
    with pytest.raises(ValueError, match="outer_step"):
        viz.dashboard(History({"reward": np.zeros(3)}, 1))
    with pytest.raises(ValueError, match="reduce"):
        viz.per_batch(full_run, "reward", "median")
