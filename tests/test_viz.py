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


def test_live_explorer_shows_title_controls_and_an_image_it_updates_in_place(monkeypatch):
    import IPython.display

    calls, shown = [], []

    class Handle:
        def update(self, bundle, raw, metadata):
            shown.append(("update", bundle, metadata))

    def fake_display(bundle, raw=False, metadata=None, display_id=None):
        shown.append(("display", bundle, metadata))
        return Handle() if display_id else None

    def counted(height, colour):
        calls.append(height)
        return bar_chart(height, colour)

    monkeypatch.setattr(IPython.display, "display", fake_display)
    explorer = viz.explorer(counted, height=(1, 3, 1), colour={"blue": "C0", "orange": "C1"}, mode="live",
                            title="Bars")
    explorer.show_live()
    title, controls, image = (bundle for _, bundle, _ in shown)
    assert "<b>Bars</b>" in title["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in controls
    assert "run the cell" in controls["text/plain"]  # what a viewer without widgets shows
    assert "image/png" in image and image["text/plain"] == "Bars: height=1, colour=blue"
    assert shown[2][2] == {"needs_background": "light"}  # a light card in JupyterLab's dark theme
    assert calls == [1]

    box = explorer.widget()  # a fresh set of controls reads the same values
    sliders = {child.description: child for child in box.children}
    assert type(sliders["height"]).__name__ == "SelectionSlider"
    assert [label for label, _ in sliders["height"].options] == ["1", "2", "3"]
    assert sliders["height"].style.description_width == "initial"  # the name is never cut
    assert type(sliders["colour"]).__name__ == "Dropdown"


def test_live_controls_update_the_image_and_reuse_cached_frames(monkeypatch):
    import IPython.display

    updates, boxes = [], []

    class Handle:
        def update(self, bundle, raw, metadata):
            updates.append(bundle["text/plain"])

    def fake_display(bundle, raw=False, metadata=None, display_id=None):
        return Handle() if display_id else None

    calls = []

    def counted(height, colour):
        calls.append(height)
        return bar_chart(height, colour)

    monkeypatch.setattr(IPython.display, "display", fake_display)
    explorer = viz.explorer(counted, height=(1, 3, 1), colour={"blue": "C0", "orange": "C1"}, mode="live")
    make_box = explorer.widget
    monkeypatch.setattr(explorer, "widget", lambda: boxes.append(make_box()) or boxes[-1])
    explorer.show_live()
    height, colour = boxes[0].children
    height.value = 2
    colour.value = 1
    height.value = 0
    assert updates == ["height=3, colour=blue", "height=3, colour=orange", "height=1, colour=orange"]
    assert calls == [1, 3, 3, 1]
    colour.value = 0  # back to the first frame: cached, fn is not called again
    assert calls == [1, 3, 3, 1] and updates[-1] == "height=1, colour=blue"
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
# text alternatives of the static explorer's frames (screen readers)


def test_every_frame_carries_its_alt_text_with_the_title():
    explorer = viz.explorer(bar_chart, height=[1, 2], colour={"blue": "C0", "orange": "C1"}, mode="static",
                            title="Bars", alt="A {colour} bar of height {height}")
    html = explorer.html()
    frames = data_of(html)["frames"]
    assert frames["1,1"]["alt"] == "Bars: A orange bar of height 2"
    assert len({frame["alt"] for frame in frames.values()}) == 4
    assert 'alt="Bars: A blue bar of height 1"' in html  # the default frame, before any script runs
    assert "img.alt = frame.alt;" in html  # the script swaps the text with the picture


def test_alt_can_be_computed_from_the_arguments_and_defaults_to_the_settings():
    described = viz.explorer(bar_chart, height=[1, 3], colour=["C0"], offset=0.5, mode="static",
                             alt=lambda height, colour, offset: f"one bar reaching {height + offset:g}")
    assert [described.describe((i, 0)) for i in range(2)] == ["one bar reaching 1.5", "one bar reaching 3.5"]
    plain = viz.explorer(bar_chart, height=[1, 3], colour=["C0"], mode="static", title="Bars")
    assert plain.describe((1, 0)) == "Bars: height=3, colour=C0"


def test_html_frames_are_labelled_groups_in_a_live_region():
    html = viz.explorer(lambda n: f"<table><tr><td>{n}</td></tr></table>", n=[1, 2], mode="static",
                        alt="Table for n = {n}").html()
    assert '<div class="cpx-frame" role="group" aria-label="Table for n = 1"><table>' in html
    assert '<div class="cpx-view" aria-live="polite">' in html
    assert data_of(html)["frames"]["1"]["alt"] == "Table for n = 2"


def test_a_bad_alt_is_an_error_that_names_the_controls():
    with pytest.raises(ValueError, match=r"\{height\}, \{colour\}"):
        viz.explorer(bar_chart, height=[1, 2], colour=["C0"], alt="bar of {width}")
    with pytest.raises(TypeError, match="alt must be a string or a callable"):
        viz.explorer(bar_chart, height=[1, 2], colour=["C0"], alt=3)
# prefix_tree: the trie of one group coloured by W_agg (chapter 3)
def _tree_nodes():
    """Two groups of four completions over tokens {0, 1} + EOS = 2: a shared first token, then a split."""
    import torch

    from companion import prefix

    tokens = torch.tensor([[0, 0, 2], [0, 1, 2], [0, 1, 2], [0, 0, 2],
                           [1, 2, 2], [1, 0, 2], [0, 2, 2], [1, 1, 2]])
    mask = torch.tensor([[1, 1, 1]] * 4 + [[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    adv = rewards - rewards.view(2, 4).mean(1).repeat_interleave(4)
    weights = mask / mask.sum(1, keepdim=True) / 4  # 1/(G|o_i|): W_agg != 0 where lengths differ
    return prefix.trie(tokens, mask, weights, adv, 4), adv


def _node_boxes(ax):
    """The token boxes drawn (texts with a bbox), the prompt box first."""
    return [t for t in ax.texts if t.get_bbox_patch() is not None]


def test_prefix_tree_draws_every_node_with_its_value_and_a_diverging_colour():
    import numpy as np

    nodes, _ = _tree_nodes()
    fig, ax = plt.subplots()
    out = viz.prefix_tree(nodes, group=0, labels=("a", "b", "."), leaf_labels=["r=1", "r=0", "r=0", "r=1"],
                          root_label="x", ax=ax, colorbar=False, digits=3)
    assert out is ax
    group0 = [n for n in nodes if n.group == 0]
    boxes = _node_boxes(ax)
    assert len(boxes) == len(group0) + 1 and boxes[0].get_text() == "x"
    texts = [t.get_text() for t in ax.texts]
    for node in group0:  # the value is written out: the second carrier besides colour
        assert viz._signed(node.w_agg, 3) in texts
    root = next(n for n in group0 if n.depth == 0)
    assert root.whole_group and root.w_agg == pytest.approx(0.0, abs=1e-15)  # equal lengths: cancels
    by_value = {round(n.w_agg, 12): box for n, box in zip(group0, boxes[1:], strict=True)}
    positive = by_value[max(by_value)].get_bbox_patch().get_facecolor()
    negative = by_value[min(by_value)].get_bbox_patch().get_facecolor()
    white = plt.get_cmap("BrBG")(0.5)
    assert positive[1] > positive[0] and negative[0] > negative[2]  # green-ish above 0, brown-ish below
    assert np.allclose(_node_boxes(ax)[1].get_bbox_patch().get_facecolor(), white, atol=0.01)  # the root
    assert "r=1 (×2)" in texts and "r=0 (×2)" in texts  # identical completions end in one leaf
    plt.close(fig)


def test_prefix_tree_second_group_colorbar_and_default_labels():
    nodes, _ = _tree_nodes()
    ax = viz.prefix_tree(nodes, group=1, vmax=0.5, title="group 2")
    assert ax.get_title() == "group 2" and len(ax.figure.axes) == 2  # the colour bar
    assert {t.get_text() for t in _node_boxes(ax)} >= {"x", "0", "1", "2"}  # ids without labels
    root_values = [n.w_agg for n in nodes if n.group == 1 and n.depth == 0]
    assert len(root_values) == 2 and sum(root_values) == pytest.approx(0.0, abs=1e-15)
    plt.close(ax.figure)


def test_prefix_tree_bad_input_names_the_argument():
    nodes, _ = _tree_nodes()
    with pytest.raises(ValueError, match="non-empty list"):
        viz.prefix_tree([])
    with pytest.raises(TypeError, match=r"cp\.prefix\.Node"):
        viz.prefix_tree([1, 2])
    with pytest.raises(ValueError, match=r"group=5 .* groups present: \[0, 1\]"):
        viz.prefix_tree(nodes, group=5)
    with pytest.raises(ValueError, match="vmax"):
        viz.prefix_tree(nodes, vmax=0.0)
    with pytest.raises(ValueError, match="digits"):
        viz.prefix_tree(nodes, digits=-1)
    with pytest.raises(ValueError, match="include EOS"):
        viz.prefix_tree(nodes, labels=("a", "b"))
    with pytest.raises(ValueError, match="token id"):
        viz.prefix_tree(nodes, labels={0: "a"})
    with pytest.raises(TypeError, match="labels"):
        viz.prefix_tree(nodes, labels="ab.")
    with pytest.raises(TypeError, match="leaf_labels"):
        viz.prefix_tree(nodes, leaf_labels=3)
    plt.close("all")


def test_signed_values_keep_their_sign_when_rounding_would_hide_it():
    assert viz._signed(0.0, 3) == "0"
    assert viz._signed(0.0123, 3) == "+0.012"
    assert viz._signed(-2e-7, 3) == "-2.0e-07"
# --- svg_lines (chapter 5's explorer) -------------------------------------------------------------------
def test_svg_lines_is_well_formed_and_draws_each_series_with_its_own_dash():
    import xml.etree.ElementTree as ET

    svg = viz.svg_lines({"AdamW": [0.0, 0.1, float("nan"), 0.3], "β1 = 0 & <SGD>": [0.0, 0.05, 0.1, 0.1]},
                        [1, 2, 3, 4], title="KL <per step>", xlabel="inner step", hline=0.2)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}title").text == "KL <per step>"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 3  # the NaN breaks the first series in two
    assert [len(p.get("points").split()) for p in lines] == [2, 1, 4]
    assert lines[0].get("stroke-dasharray") != lines[2].get("stroke-dasharray")
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "β1 = 0 & <SGD>" in texts and "inner step" in texts
    assert {"1", "2", "3", "4"} <= set(texts) and "1.5" not in texts  # whole-number x: those ticks


def test_svg_lines_fixed_range_clips_and_bad_input_is_named():
    svg = viz.svg_lines({"a": [-5.0, 0.5, 9.0]}, [0, 1, 2], ylim=(0.0, 1.0), height=100)
    ys = [float(point.split(",")[1]) for point in svg.split('points="')[1].split('"')[0].split()]
    assert max(ys) <= 100 and min(ys) >= 0 and ys[0] == max(ys) and ys[2] == min(ys)
    with pytest.raises(ValueError, match="'a' has 2 values"):
        viz.svg_lines({"a": [1.0, 2.0]}, [0, 1, 2])
    with pytest.raises(ValueError, match="at least one"):
        viz.svg_lines({}, [0, 1])
    assert viz._nice_ticks(0.0, 0.37) == pytest.approx([0.0, 0.1, 0.2, 0.3])
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
