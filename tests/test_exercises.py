"""companion.exercises: pass/fail with a hint, tolerant input types, clear errors for misuse."""

import math

import numpy as np
import pytest
import torch

from companion.exercises import Check, check_close, check_true


def test_exact_and_close_answers_pass():
    assert check_close("a", 0.5, 0.5).passed
    assert check_close("a", 0.5 + 1e-9, 0.5).passed
    assert check_close("a", [1.0, 2.0], (1.0, 2.0 * (1 + 5e-7))).passed


def test_tolerance_is_relative_plus_absolute():
    assert not check_close("a", 1.01, 1.0).passed
    assert check_close("a", 1.01, 1.0, rtol=0.02).passed
    assert check_close("a", 1e-10, 0.0).passed  # atol covers zero targets
    assert not check_close("a", 1e-6, 0.0).passed


def test_numpy_and_torch_answers_are_read_element_wise():
    assert check_close("a", np.array([[0.5, -0.5]]), [0.5, -0.5]).passed
    assert check_close("a", torch.tensor([0.5, -0.5], requires_grad=True), [0.5, -0.5]).passed
    assert check_close("a", np.float64(0.25), 0.25).passed


def test_failures_say_where_and_keep_the_hint():
    check = check_close("advantages", [0.5, 0.5], [0.5, -0.5], hint="subtract the mean")
    assert not check and not check.passed
    assert "position 1" in check.message and "-0.5" in check.message
    assert "Hint: subtract the mean" in str(check)
    assert "subtract the mean" in check._repr_html_()


def test_hint_is_not_shown_on_success():
    check = check_close("x", 1.0, 1.0, hint="secret")
    assert "secret" not in str(check) and "secret" not in check._repr_html_()
    assert str(check).startswith("✅")


def test_blank_wrong_shape_nan_and_wrong_type_fail_softly():
    assert "No answer" in check_close("x", None, 1.0).message
    assert "Expected 2" in check_close("x", [1.0], [1.0, 2.0]).message
    assert not check_close("x", math.nan, 1.0).passed
    assert not check_close("x", "0.5", 0.5).passed
    assert not check_close("x", True, 1.0).passed


def test_misuse_raises():
    with pytest.raises(ValueError, match="rtol"):
        check_close("x", 1.0, 1.0, rtol=-1)
    with pytest.raises(TypeError, match="expected"):
        check_close("x", 1.0, "one")
    with pytest.raises(TypeError, match="condition"):
        check_true("x", 1, "no")


def test_check_true():
    assert check_true("claim", True, "it is not").passed
    failed = check_true("claim", False, "it is not", hint="look at Eq. 9")
    assert failed.message == "it is not" and "Eq. 9" in str(failed)


def test_html_escapes_user_text():
    check = Check("<b>name</b>", False, "a < b", "use <i>")
    rendered = check._repr_html_()
    assert "&lt;b&gt;name&lt;/b&gt;" in rendered and "a &lt; b" in rendered and "use &lt;i&gt;" in rendered


# --- Chapter 2 ---
from companion import exercises  # noqa: E402

DR_GRPO_VERL = dict(loss_agg_mode="seq-mean-token-sum", norm_adv_by_std_in_grpo=False, use_kl_loss=True,
                    kl_loss_coef=0.04, kl_loss_type="low_var_kl")


def test_ch02_token_weights():
    lengths = [2, 4, 6, 8]
    assert exercises.check_token_weights("grpo", lengths, [1 / 8, 1 / 16, 1 / 24, 1 / 32]).passed
    assert exercises.check_token_weights("dr_grpo", lengths, [0.25] * 4).passed
    assert exercises.check_token_weights("dapo", np.array(lengths), torch.full((4,), 1 / 20)).passed
    wrong = exercises.check_token_weights("grpo", lengths, [0.25] * 4)
    assert not wrong and "then over the G completions" in str(wrong)
    assert not exercises.check_token_weights("dapo", lengths, None)
    with pytest.raises(ValueError, match="method"):
        exercises.check_token_weights("ppo", lengths, [0.25] * 4)
    with pytest.raises(ValueError, match="lengths"):
        exercises.check_token_weights("grpo", [0, 2], [1.0, 1.0])


def test_ch02_constant_omega_is_measured_and_checked():
    assert exercises.constant_omega_presets() == ("grpo_r1", "gspo")
    assert exercises.check_constant_omega({"gspo", "grpo_r1"}).passed
    missing = exercises.check_constant_omega(["grpo_r1"])
    assert not missing and "gspo" in missing.message and "Hint" in str(missing)
    extra = exercises.check_constant_omega(["grpo_r1", "gspo", "dapo"])
    assert not extra and "not constant" in extra.message.lower() and "dapo" in extra.message
    assert "candidates" in exercises.check_constant_omega(["grpo"]).message
    assert not exercises.check_constant_omega(None)
    assert not exercises.check_constant_omega(3)


def test_ch02_trainer_config():
    assert exercises.check_trainer_config("verl", DR_GRPO_VERL).passed
    trl = dict(loss_type="dr_grpo", max_completion_length=1, scale_rewards="none", beta=0.04,
               use_bias_correction_kl=False)
    assert exercises.check_trainer_config("trl", trl).passed
    assert exercises.check_trainer_config("verl", dict(loss_agg_mode="seq-mean-token-sum",
                                                       norm_adv_by_std_in_grpo=False), beta=0.0, kl=None)
    with_sigma = exercises.check_trainer_config("verl", {**DR_GRPO_VERL, "norm_adv_by_std_in_grpo": True})
    assert not with_sigma and "advantages" in with_sigma.message and "σ" in with_sigma.hint
    token_mean = exercises.check_trainer_config("verl", {**DR_GRPO_VERL, "loss_agg_mode": "token-mean"})
    assert not token_mean and "loss_agg_mode" in token_mean.hint
    no_kl = exercises.check_trainer_config("verl", {**DR_GRPO_VERL, "use_kl_loss": False})
    assert not no_kl and "kl" in no_kl.hint
    scaled = exercises.check_trainer_config("trl", {**trl, "max_completion_length": 16})
    assert not scaled and "16" in scaled.message
    assert "not valid" in exercises.check_trainer_config("verl", {"foo": 1}).message
    assert not exercises.check_trainer_config("verl", None)
    assert not exercises.check_trainer_config("verl", ["loss_agg_mode"])
    with pytest.raises(ValueError, match="library"):
        exercises.check_trainer_config("openrlhf", DR_GRPO_VERL)


# --- Chapter 1 ---
from companion.exercises import (  # noqa: E402
    check_clipped_tokens,
    check_group_advantages,
    group_advantages_reference,
)
from companion.objective import Objective  # noqa: E402

CH01_REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.25, 0.25, 0.25, 0.25]  # the last group is tied


@pytest.mark.parametrize("baseline", ["group_mean", "leave_one_out"])
@pytest.mark.parametrize("std", [False, True])
def test_ch01_reference_advantages_match_the_objective(baseline, std):
    rewards = torch.tensor(CH01_REWARDS, dtype=torch.float64)
    objective = Objective(baseline=baseline, std_scale="group" if std else None)
    expected = objective.advantages(rewards, group_size=4)
    reference = group_advantages_reference(CH01_REWARDS, 4, baseline=baseline, std=std)
    np.testing.assert_allclose(reference, expected.numpy(), rtol=1e-12, atol=1e-12)
    assert check_group_advantages(expected.float(), rewards, 4, baseline=baseline, std=std).passed


def test_ch01_group_advantages_right_and_wrong():
    r = torch.tensor(CH01_REWARDS)
    groups = r.view(-1, 4)
    right = (groups - groups.mean(1, keepdim=True)).flatten()
    assert check_group_advantages(right, r, 4).passed
    assert check_group_advantages(right.tolist(), CH01_REWARDS, 4).passed
    batch = check_group_advantages(r - r.mean(), r, 4)
    assert not batch and "whole batch" in batch.message and "Hint" in str(batch)
    loo = check_group_advantages(right, r, 4, baseline="leave_one_out")
    assert not loo and "group-mean" in loo.message
    no_sigma = check_group_advantages(right, r, 4, std=True)
    assert not no_sigma and "without the group's σ" in no_sigma.message
    sign = check_group_advantages(-right, r, 4)
    assert not sign and "sign" in sign.message
    assert "raw rewards" in check_group_advantages(r, r, 4).message
    assert not check_group_advantages(None, r, 4)
    assert "Expected 12" in check_group_advantages([0.0], r, 4).message
    population = Objective(std_correction=0).advantages(r.double(), group_size=4)
    assert "population" in check_group_advantages(population, r, 4, std=True).message


def test_ch01_group_advantages_misuse_raises():
    with pytest.raises(ValueError, match="divide"):
        check_group_advantages([0.0] * 6, [1.0] * 6, 4)
    with pytest.raises(ValueError, match="group_size"):
        check_group_advantages([0.0] * 4, [1.0] * 4, 1)
    with pytest.raises(ValueError, match="baseline"):
        check_group_advantages([0.0] * 4, [1.0] * 4, 2, baseline="batch_mean")


def test_ch01_clipped_tokens():
    ratios = [1.3, 1.3, 0.7, 0.7, 1.1, 0.95]
    advantages = [1.0, -1.0, 1.0, -1.0, 1.0, -0.5]
    right = [True, False, False, True, False, False]
    assert check_clipped_tokens(right, ratios, advantages).passed
    assert check_clipped_tokens([1, 0, 0, 1, 0, 0], ratios, advantages).passed
    assert check_clipped_tokens(torch.tensor(right), np.array(ratios), advantages).passed
    outside = check_clipped_tokens([True, True, True, True, False, False], ratios, advantages)
    assert not outside and "outside the range" in outside.message and "one-sided" in outside.hint
    wrong = check_clipped_tokens([False] * 6, ratios, advantages)
    assert not wrong and "[0, 3]" in wrong.message
    assert not check_clipped_tokens(None, ratios, advantages)
    assert "Expected 6" in check_clipped_tokens([True], ratios, advantages).message
    assert not check_clipped_tokens([2, 0, 0, 0, 0, 0], ratios, advantages)
    # clip-higher (DAPO's 0.28): 1.25 is no longer clipped
    assert check_clipped_tokens([False], [1.25], [1.0], clip_high=0.28).passed
    with pytest.raises(ValueError, match="length"):
        check_clipped_tokens([True], [1.3, 1.0], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        check_clipped_tokens([True], [0.0], [1.0])


def test_ch01_clipped_tokens_agree_with_the_objective():
    """The check's rule is the objective's: clipped tokens are those whose gradient the clip zeroes."""
    g = torch.Generator().manual_seed(0)
    log_ratio = 0.5 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], dtype=torch.float64)
    mask = torch.ones(6, 5, dtype=torch.float64)
    logprobs = log_ratio.clone().requires_grad_(True)
    out = Objective.preset("ppo").loss(logprobs, torch.zeros_like(log_ratio), adv, mask)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    ratios = log_ratio.exp().flatten()
    advantages = adv[:, None].expand(6, 5).flatten()
    zero_gradient = (grad == 0).flatten()
    assert check_clipped_tokens(zero_gradient, ratios, advantages).passed


def test_ch01_tied_probability():
    from companion.exercises import check_tied_probability

    p, G = 0.2, 8
    assert check_tied_probability(p**G + (1 - p) ** G, p, G).passed
    assert check_tied_probability(np.float64(0.8**8 + 0.2**8), p, G).passed
    only_wrong = check_tied_probability((1 - p) ** G, p, G)
    assert not only_wrong and "all-wrong" in only_wrong.message and "all G are right" in only_wrong.hint
    assert "NOT tied" in check_tied_probability(1 - p**G - (1 - p) ** G, p, G).message
    assert not check_tied_probability(None, p, G) and not check_tied_probability(0.5, p, G)
    with pytest.raises(ValueError, match="p must"):
        check_tied_probability(0.5, 1.5, G)
    with pytest.raises(ValueError, match="group_size"):
        check_tied_probability(0.5, p, 0)


# --- The chapters' own exercises: each solution as printed in the book passes its check, each stub fails ---
import ast  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402

import companion as cp  # noqa: E402

BOOK = Path(__file__).resolve().parents[1] / "book"


@dataclass
class Exercise:
    code: str  # the code cell that follows the exercise (stub answer and check), "" if none
    solution: str  # the solution's markdown cell


def chapter_exercises(name: str) -> dict[str, Exercise]:
    """label -> the exercise's code cell and its solution cell, read from the stored notebook."""
    cells = nbformat.read(BOOK / name, as_version=4).cells
    found: dict[str, Exercise] = {}
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        for label in re.findall(r":::\{exercise\}\n:label: (\S+)", cell.source):
            following = cells[i + 1] if i + 1 < len(cells) else None
            code = following.source if following is not None and following.cell_type == "code" else ""
            found[label] = Exercise(code, "")
        match = re.match(r":::\{solution\} (\S+)\n:class: dropdown\n", cell.source)
        if match:
            assert cell.source.rstrip().endswith(":::") and cell.source.count(":::{") == 1, \
                f"{match[1]}: a solution has a markdown cell of its own"
            found[match[1]].solution = cell.source
    assert all(e.solution for e in found.values()), [k for k, e in found.items() if not e.solution]
    return found


def python_blocks(solution: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", solution, flags=re.S))


def run_checks(code: str, namespace: dict) -> list:
    """Run a cell in ``namespace``; return the checks it displays and the value of its last expression."""
    shown: list = []
    namespace["display"] = shown.append
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:
        shown.append(eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace))
    return shown


def passed(checks: list) -> bool:
    assert checks and all(hasattr(c, "passed") for c in checks)
    return all(c.passed for c in checks)


def answered(code: str, names: set[str], answer: str) -> str:
    """The cell with its stub (the top-level statements that define ``names``) replaced by ``answer``."""
    tree = ast.parse(code)
    lines = code.splitlines()
    stub = [node for node in tree.body
            if {getattr(t, "id", None) for t in getattr(node, "targets", [])} & names
            or getattr(node, "name", None) in names]
    assert stub, f"no stub for {names}"
    first, last = stub[0].lineno - 1, stub[-1].end_lineno
    assert all(node in stub for node in tree.body if first < node.lineno <= last), "the stub is contiguous"
    return "\n".join([*lines[:first], answer, *lines[last:]])


def test_ch01_solutions_pass_and_stubs_fail():
    ex = chapter_exercises("ch01_group_rl.ipynb")
    assert set(ex) == {"ch01-group-advantages", "ch01-leave-one-out", "ch01-clipped-tokens",
                       "ch01-tied-fraction", "ch01-reuse"}
    ns = {"torch": torch, "np": np, "cp": cp}
    clipped = ex["ch01-clipped-tokens"]
    solutions = {  # label: (the names the stub defines, the answer as the solution prints it)
        "ch01-group-advantages": ({"group_advantages"}, None),
        "ch01-leave-one-out": ({"leave_one_out"}, None),
        "ch01-clipped-tokens": ({"clipped"}, "clipped = " + re.search(r"`(\[[^`]*\])`", clipped.solution)[1]),
        "ch01-tied-fraction": ({"tied_probability"}, None),
    }
    for label, (names, answer) in solutions.items():
        code = ex[label].code
        assert not passed(run_checks(code, dict(ns))), f"{label}: the stub passes"
        answer = answer or python_blocks(ex[label].solution)
        assert passed(run_checks(answered(code, names, answer), ns)), f"{label}: the solution fails"
    assert not ex["ch01-reuse"].code  # answered by a training run and words: no check


def test_ch02_solutions_pass_and_stubs_fail():
    ex = chapter_exercises("ch02_one_objective.ipynb")
    assert set(ex) == {"ch02-weights", "ch02-omega", "ch02-verl", "ch02-scale"}
    ns = {"torch": torch, "np": np, "cp": cp}
    weights, omega, verl = ex["ch02-weights"], ex["ch02-omega"], ex["ch02-verl"]
    # the first two solutions give their answers in prose
    assert "(1/8, 1/16, 1/24, 1/32)" in weights.solution and "1/4$ for every token" in weights.solution
    assert "1/20$" in weights.solution
    assert re.search(r"\n`grpo_r1` and `gspo`\. ", omega.solution)
    solutions = {
        "ch02-weights": ({"alpha_grpo", "alpha_dr_grpo", "alpha_dapo"},
                         "alpha_grpo = [1 / 8, 1 / 16, 1 / 24, 1 / 32]\n"
                         "alpha_dr_grpo = [1 / 4] * 4\nalpha_dapo = [1 / 20] * 4"),
        "ch02-omega": ({"constant_omega"}, 'constant_omega = {"grpo_r1", "gspo"}'),
        "ch02-verl": ({"verl_config"}, python_blocks(verl.solution)),
    }
    for label, (names, answer) in solutions.items():
        code = ex[label].code
        assert not passed(run_checks(code, dict(ns))), f"{label}: the stub passes"
        assert passed(run_checks(answered(code, names, answer), ns)), f"{label}: the solution fails"
    # the TRL half of the verl solution, as its prose gives it
    trl = dict(loss_type="dr_grpo", scale_rewards="none", beta=0.04, use_bias_correction_kl=False,
               max_completion_length=1)
    for key, value in trl.items():
        assert f"{key}={value!r}".replace("'", '"') in verl.solution, key
    assert exercises.check_trainer_config("trl", trl).passed
    assert not ex["ch02-scale"].code  # answered in words: no check
# --- chapter 4 ---
CH04_INVARIANT = {"dr_grpo_adamw": True, "dr_grpo_adam_l2": False, "dr_grpo_adamw_kl": False,
                  "dr_grpo_adamw_kl_scaled": True, "dr_grpo_adamw_clip": False, "dr_grpo_sgd": False,
                  "grpo_sgd": True}


def test_ch04_scale_invariance_is_measured_and_checked():
    measured = {setup: exercises.scale_invariant(setup) for setup in exercises.CH04_SETUPS}
    assert measured == CH04_INVARIANT  # the solution in the chapter
    assert exercises.check_scale_invariance(CH04_INVARIANT).passed
    one_wrong = exercises.check_scale_invariance({**CH04_INVARIANT, "dr_grpo_adamw_kl": True})
    assert not one_wrong and "dr_grpo_adamw_kl" in one_wrong.message and "Hint" in str(one_wrong)
    assert "missing" in exercises.check_scale_invariance({"dr_grpo_adamw": True}).message.lower()
    assert "unknown" in exercises.check_scale_invariance({**CH04_INVARIANT, "ppo": True}).message.lower()
    assert "True or False" in exercises.check_scale_invariance({k: 1 for k in CH04_INVARIANT}).message
    assert not exercises.check_scale_invariance(None)
    assert not exercises.check_scale_invariance(["dr_grpo_adamw"])
    with pytest.raises(ValueError, match="setup"):
        exercises.scale_invariant("adam")


def test_ch04_kl_beta():
    assert exercises.check_kl_beta(0.04 / 64, phi=1 / 64).passed
    assert exercises.check_kl_beta(np.float64(40.96), phi=1024.0).passed
    for wrong, words in ((0.04 * 64, "twice over"), (0.04, "unchanged"), (0.04 / 64**2, "φ²β")):
        check = exercises.check_kl_beta(wrong, phi=1 / 64)
        assert not check and words in check.message, words
    assert not exercises.check_kl_beta(None, phi=2.0)
    with pytest.raises(ValueError, match="phi"):
        exercises.check_kl_beta(0.1, phi=0.0)
    with pytest.raises(ValueError, match="beta"):
        exercises.check_kl_beta(0.1, phi=1.0, beta=0.0)


def test_ch04_safe_scale():
    # 1/(1 + ε/(φ√v̂)) = 0.99  <=>  φ = 99 ε/√v̂
    assert exercises.check_safe_scale(99 * 1e-8 / 3e-4, sqrt_v_hat=3e-4, eps=1e-8).passed
    assert exercises.check_safe_scale(1e-5 * 0.9 / (0.1 * 2e-3), sqrt_v_hat=2e-3, eps=1e-5, tolerance=0.1)
    for wrong, words in ((100 * 1e-8 / 3e-4, "1 − tolerance"), (1e-8 / 3e-4, "halved"),
                         (3e-4 / (99 * 1e-8), "reciprocal")):
        check = exercises.check_safe_scale(wrong, sqrt_v_hat=3e-4, eps=1e-8)
        assert not check and words in check.message, words
    assert not exercises.check_safe_scale(None, sqrt_v_hat=3e-4, eps=1e-8)
    with pytest.raises(ValueError, match="tolerance"):
        exercises.check_safe_scale(1.0, sqrt_v_hat=3e-4, eps=1e-8, tolerance=1.5)
# --- chapter 3
CH03_GROUPS = [((2, 4, 6, 8), (1, 1, 0, 0)), ((2, 4, 6, 8), (0, 0, 1, 1)), ((3, 3, 5, 5), (1, 0, 1, 0)),
               ((2, 8, 8, 8), (0, 1, 1, 1))]
CH03_PARTIAL = dict(lengths=(2, 3, 5, 2, 4, 6), rewards=(1, 0, 1, 1, 0, 0), members=[0, 1, 2])
CH03_LOGITS = [0.0, 0.0, math.log(4.0)]


@pytest.mark.parametrize(("weighting", "preset"),
                         [("grpo", "grpo_r1"), ("dr_grpo", "dr_grpo"), ("dapo", "dapo")])
def test_ch03_w_agg_reference_agrees_with_the_objective_and_the_trie(weighting, preset):
    """The pure-Python W_agg equals the trie's node value on the shared first token (σ switched off)."""
    from companion import exercises, prefix

    for lengths, rewards in CH03_GROUPS:
        mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).double()
        tokens = torch.zeros(mask.shape, dtype=torch.long)  # every completion shares every token it has
        objective = Objective.preset(preset, beta=0.0, std_scale=None)
        adv = objective.advantages(torch.tensor(rewards, dtype=torch.float64), len(lengths))
        out = objective.loss(torch.zeros_like(mask), torch.zeros_like(mask), adv, mask)
        (root,) = [n for n in prefix.trie(tokens, mask, out.weights, adv, len(lengths)) if n.depth == 0]
        assert exercises.w_agg_reference(lengths, rewards, weighting) == pytest.approx(root.w_agg, abs=1e-15)


def test_ch03_w_agg_signs():
    from companion.exercises import check_w_agg_signs

    assert check_w_agg_signs([1, -1, 0, -1], CH03_GROUPS).passed
    assert check_w_agg_signs(np.array([0, 0, 0, 0]), CH03_GROUPS, "dr_grpo").passed
    assert "flipped" in check_w_agg_signs([-1, 1, 0, 1], CH03_GROUPS).message
    wrong = check_w_agg_signs([1, -1, 1, -1], CH03_GROUPS)
    assert not wrong and "[2]" in wrong.message and "1/|o_i|" in wrong.hint
    assert "+1, -1 or 0" in check_w_agg_signs([0.5, -1, 0, -1], CH03_GROUPS).message
    assert "4 signs" in check_w_agg_signs([1], CH03_GROUPS).message
    assert not check_w_agg_signs(None, CH03_GROUPS)
    with pytest.raises(ValueError, match="weighting"):
        check_w_agg_signs([1], CH03_GROUPS[:1], "gspo")
    with pytest.raises(ValueError, match="same group"):
        check_w_agg_signs([1], [((2, 3), (1, 0, 1))])


def test_ch03_partial_prefix_weights():
    from companion.exercises import check_partial_prefix_weights

    assert check_partial_prefix_weights([1, 2, 1, 2, 1, 1], **CH03_PARTIAL).passed
    assert check_partial_prefix_weights([3, 5, 2, 4, 1.5, 2.5], **CH03_PARTIAL).passed
    constant = check_partial_prefix_weights([1] * 6, **CH03_PARTIAL)
    assert not constant and "Constant weights" in constant.message and "0.5" in constant.message
    whole = check_partial_prefix_weights([1, 2, 1, 1, 1, 1], **CH03_PARTIAL)
    assert not whole and "whole-group sum" in whole.message and "partial" not in whole.message
    assert "> 0" in check_partial_prefix_weights([1, 1, 0, 1, 1, 0], **CH03_PARTIAL).message
    assert "6 weights" in check_partial_prefix_weights([1, 2], **CH03_PARTIAL).message
    assert not check_partial_prefix_weights(None, **CH03_PARTIAL)
    with pytest.raises(ValueError, match="members"):
        check_partial_prefix_weights([1] * 6, CH03_PARTIAL["lengths"], CH03_PARTIAL["rewards"], range(6))


def test_ch03_expected_prefix_step_matches_the_average_over_sampled_prefixes():
    """The checker's expectation, against torch: the exact average of lr·w·∇_z log softmax(z)_y over y ~ p."""
    from companion.exercises import check_expected_prefix_step, expected_prefix_step

    z = torch.tensor(CH03_LOGITS, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(z.detach(), -1)
    average = torch.zeros(3, dtype=torch.float64)
    for y in range(3):
        (grad,) = torch.autograd.grad(torch.log_softmax(z, -1)[y], z)
        average += p[y] * 20 * 0.01 * grad
        if y == 2:
            forced = 20 * 0.01 * grad
    np.testing.assert_allclose(expected_prefix_step(CH03_LOGITS, 2, 0.01, 20, "sampled"), average, atol=1e-17)
    np.testing.assert_allclose(expected_prefix_step(CH03_LOGITS, 2, 0.01, 20, "forced"), forced, rtol=1e-12)
    assert check_expected_prefix_step(forced.tolist(), CH03_LOGITS, 2, 0.01, 20, "forced").passed
    assert check_expected_prefix_step([0.0, 0.0, 0.0], CH03_LOGITS, 2, 0.01, 20, "sampled").passed
    swapped = check_expected_prefix_step(forced.tolist(), CH03_LOGITS, 2, 0.01, 20, "sampled")
    assert not swapped and "forced prefix" in swapped.message
    missing_p = check_expected_prefix_step([0.0, 0.0, 0.2], CH03_LOGITS, 2, 0.01, 20, "forced")
    assert not missing_p and "−p part" in missing_p.message
    flipped = check_expected_prefix_step((-forced).tolist(), CH03_LOGITS, 2, 0.01, 20, "forced")
    assert not flipped and "sign flipped" in flipped.message
    assert not check_expected_prefix_step(None, CH03_LOGITS, 2, 0.01, 20, "forced")
    with pytest.raises(ValueError, match="mode"):
        check_expected_prefix_step([0.0] * 3, CH03_LOGITS, 2, 0.01, 20, "shared")
    with pytest.raises(ValueError, match="token"):
        check_expected_prefix_step([0.0] * 3, CH03_LOGITS, 3, 0.01, 20, "forced")
# --- chapter 5 ---
from companion import theory  # noqa: E402
from companion.exercises import (  # noqa: E402
    ch05_drift,
    ch05_largest_mu,
    ch05_step_ratio,
    check_c_t,
    check_largest_mu,
    check_post_clip_drift,
)


@pytest.mark.parametrize(("beta1", "beta2"), [(0.9, 0.95), (0.9, 0.999), (0.0, 0.999), (0.999999, 0.999999)])
def test_ch05_reference_agrees_with_theory(beta1, beta2):
    """The checks' pure-Python formulas and companion.theory are written independently; they agree."""
    for T in (2, 3, 10, 200):
        for k in (0, 1, 4):
            assert ch05_step_ratio(beta1, beta2, T, k) == pytest.approx(theory.c_tk(beta1, beta2, T, k),
                                                                       rel=1e-12, abs=1e-300)
        drift = theory.drift_after_vanishing(beta1, beta2, T, 6)
        assert ch05_drift(beta1, beta2, T, 6) == pytest.approx(drift, rel=1e-12, abs=1e-300)


def test_ch05_c_t():
    right = theory.c_t(0.9, 0.999, 3)
    assert check_c_t(right, 0.9, 0.999, 3).passed and check_c_t(np.float64(right), 0.9, 0.999, 3).passed
    limit = check_c_t(0.9 / 0.999**0.5, 0.9, 0.999, 3)
    assert not limit and "large-T limit" in limit.message
    assert "momentum factor" in check_c_t(0.9 * (1 - 0.9**2) / (1 - 0.9**3), 0.9, 0.999, 3).message
    assert not check_c_t(None, 0.9, 0.999, 3) and not check_c_t(0.5, 0.9, 0.999, 3)
    with pytest.raises(ValueError, match="T must"):
        check_c_t(0.5, 0.9, 0.999, 1)
    with pytest.raises(ValueError, match="beta"):
        check_c_t(0.5, 1.0, 0.999, 3)


def test_ch05_post_clip_drift():
    right = theory.drift_after_vanishing(0.9, 0.95, 5, 10)
    assert check_post_clip_drift(right, 0.9, 0.95, 5, 10).passed
    large_t = sum((0.9 / 0.95**0.5) ** (k + 1) for k in range(10))
    assert "large-T form" in check_post_clip_drift(large_t, 0.9, 0.95, 5, 10).message
    assert "limit" in check_post_clip_drift(theory.drift_limit(0.9, 0.95), 0.9, 0.95, 5, 10).message
    too_many = theory.drift_after_vanishing(0.9, 0.95, 5, 11)
    assert "too many" in check_post_clip_drift(too_many, 0.9, 0.95, 5, 10).message
    assert not check_post_clip_drift(None, 0.9, 0.95, 5, 10)
    with pytest.raises(ValueError, match="K must"):
        check_post_clip_drift(1.0, 0.9, 0.95, 5, -1)


def test_ch05_largest_mu():
    mu = ch05_largest_mu(0.9, 0.999, 3, 3.0)
    K = mu - 3 + 1
    drift = [theory.drift_after_vanishing(0.9, 0.999, 3, n) for n in (K, K + 1)]
    assert drift[0] <= 3.0 < drift[1]
    assert check_largest_mu(mu, 0.9, 0.999, 3, 3.0).passed
    assert "number K" in check_largest_mu(K, 0.9, 0.999, 3, 3.0).message
    assert "too many" in check_largest_mu(mu + 1, 0.9, 0.999, 3, 3.0).message
    assert not check_largest_mu(None, 0.9, 0.999, 3, 3.0) and not check_largest_mu(mu - 1, 0.9, 0.999, 3, 3.0)
    for beta1, bound in ((0.9, 100.0), (0.0, 0.5)):  # beyond the total drift; none at all without momentum
        with pytest.raises(ValueError, match="smaller bound"):
            ch05_largest_mu(beta1, 0.999, 3, bound)


LATER_CHAPTERS = sorted(p.name for p in BOOK.glob("ch*.ipynb") if p.name >= "ch03")


def names_assigned(code: str) -> set[str]:
    tree = ast.parse(code)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names | {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("chapter", LATER_CHAPTERS)
def test_later_chapters_solutions_pass_and_stubs_fail(chapter: str):
    """Every auto-checked exercise: its cell runs on its own (imports only), the stub as printed fails its
    check, and the solution's code, put in place of the stub, passes it."""
    import math

    checked = {label: e for label, e in chapter_exercises(chapter).items() if "cp.exercises.check_" in e.code}
    assert len(checked) >= 3, f"{chapter}: at least three auto-checked exercises"
    ns = {"torch": torch, "np": np, "cp": cp, "math": math}
    for label, exercise in checked.items():
        assert not passed(run_checks(exercise.code, dict(ns))), f"{label}: the stub passes"
        answer = python_blocks(exercise.solution)
        if answer:
            solved = answered(exercise.code, names_assigned(answer) & names_assigned(exercise.code), answer)
            assert passed(run_checks(solved, dict(ns))), f"{label}: the solution fails"
# --- Chapter 6 ---
CH06_PRESETS = {"grpo": "grpo_r1", "dapo": "dapo", "dr_grpo": "dr_grpo", "gspo": "gspo"}


@pytest.mark.parametrize("method", sorted(CH06_PRESETS))
def test_ch06_first_step_loss_reference_is_the_objectives_loss_at_s_equal_1(method):
    """App. A's formula written in pure Python equals Eq. 1 as cp.Objective computes it (fp64, s = 1)."""
    from companion.exercises import first_step_loss_reference

    g = torch.Generator().manual_seed(6)
    objective = Objective.preset(CH06_PRESETS[method], beta=0.0, kl=None)
    for _ in range(5):
        rewards = torch.randint(0, 3, (12,), generator=g).to(torch.float64) / 2
        rewards[0], rewards[4], rewards[8] = 1.0, 1.0, 1.0  # at least one group with a spread
        lengths = torch.randint(1, 8, (12,), generator=g)
        mask = (torch.arange(8) < lengths[:, None]).to(torch.float64)
        logprobs = -torch.rand(12, 8, generator=g, dtype=torch.float64) * mask
        adv = objective.advantages(rewards, 4)
        out = objective.loss(logprobs, logprobs, adv, mask)
        expected = first_step_loss_reference(method, rewards, lengths, 4)
        assert out.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
        if method in ("grpo", "gspo"):
            assert abs(expected) < 1e-15  # Eq. 9


def test_ch06_check_first_step_loss_passes_the_solution_and_names_mistakes():
    from companion.exercises import check_first_step_loss, first_step_loss_reference

    rewards, lengths = [1, 0, 1, 0, 1, 1, 0, 0.5], [2, 5, 3, 6, 4, 2, 7, 8]
    for method in CH06_PRESETS:
        expected = first_step_loss_reference(method, rewards, lengths, 4)
        assert check_first_step_loss(method, expected, rewards, lengths, group_size=4).passed
        assert not check_first_step_loss(method, None, rewards, lengths, group_size=4)
    dapo = first_step_loss_reference("dapo", rewards, lengths, 4)
    assert dapo > 0.05  # short completions are the rewarded ones here
    flipped = check_first_step_loss("dapo", -dapo, rewards, lengths, group_size=4)
    assert not flipped and "J, not the loss" in flipped.message
    no_sigma = first_step_loss_reference("dapo", rewards, lengths, 4, std=False)
    assert "without σ" in check_first_step_loss("dapo", no_sigma, rewards, lengths, group_size=4).message
    per_group = first_step_loss_reference("dapo", rewards, lengths, 4, batch_normaliser=False)
    assert "per group" in check_first_step_loss("dapo", per_group, rewards, lengths, group_size=4).message
    with_sigma = first_step_loss_reference("dr_grpo", rewards, lengths, 4, std=True)
    assert "with σ" in check_first_step_loss("dr_grpo", with_sigma, rewards, lengths, group_size=4).message
    grpo_length = check_first_step_loss("grpo", 0.1, rewards, lengths, group_size=4)
    assert not grpo_length and "Eq. 9" in grpo_length.hint
    with pytest.raises(ValueError, match="method"):
        check_first_step_loss("ppo", 0.0, rewards, lengths, group_size=4)
    with pytest.raises(ValueError, match="differ in length"):
        check_first_step_loss("grpo", 0.0, rewards, lengths[:4], group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        check_first_step_loss("grpo", 0.0, rewards, lengths, group_size=3)


def test_ch06_check_logged_curve():
    from companion.exercises import CH06_CURVE_STATEMENTS, CH06_CURVE_TRUE, check_logged_curve

    assert set(CH06_CURVE_STATEMENTS) >= CH06_CURVE_TRUE
    assert check_logged_curve({"b", "e"}).passed and check_logged_curve(["E", "b "]).passed
    missing = check_logged_curve({"b"})
    assert not missing and "e is true" in missing.message
    extra = check_logged_curve({"b", "e", "c"})
    assert not extra and "c is false" in extra.message and "β = 0" in extra.message
    assert "Not statements" in check_logged_curve({"z"}).message
    assert not check_logged_curve(None) and not check_logged_curve(3)
    assert not check_logged_curve("b")


def test_ch06_check_dashboard_panel():
    from companion.exercises import CH06_FAILURES, check_dashboard_panel
    from companion.viz import DASHBOARD_PANELS

    for failure, (_, panels, _) in CH06_FAILURES.items():
        assert panels <= set(DASHBOARD_PANELS), failure
        for panel in panels:
            assert check_dashboard_panel(failure, panel).passed
        wrong = next(p for p in DASHBOARD_PANELS if p not in panels)
        result = check_dashboard_panel(failure, wrong)
        assert not result and "does not reveal" in result.message and result.hint
    assert "shows it too" in check_dashboard_panel("zero_loss", "tied").message
    assert "panel key" in check_dashboard_panel("kl_rising", "KL").message
    assert not check_dashboard_panel("kl_rising", None)
    with pytest.raises(ValueError, match="failure"):
        check_dashboard_panel("nope", "kl")
# --- chapter 7 ---
from companion.exercises import (  # noqa: E402
    check_config_change,
    check_config_reading,
    check_exposed_chapters,
)

CH07_VERL = {"algorithm.adv_estimator": "grpo", "data.train_batch_size": 1024,
             "data.max_response_length": 1024, "actor_rollout_ref.actor.ppo_mini_batch_size": 256,
             "actor_rollout_ref.actor.use_kl_loss": True, "actor_rollout_ref.actor.kl_loss_coef": 0.001,
             "actor_rollout_ref.actor.kl_loss_type": "low_var_kl", "actor_rollout_ref.rollout.n": 5}
CH07_CANDIDATES = {
    "A": ("trl", {"loss_type": "sapo", "num_iterations": 1}),
    "B": ("trl", {"loss_type": "dr_grpo", "scale_rewards": "none", "num_iterations": 2, "beta": 0.04}),
    "C": ("verl", {"algorithm.adv_estimator": "grpo", "actor_rollout_ref.rollout.n": 8,
                   "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean",
                   "actor_rollout_ref.actor.ppo_mini_batch_size": 1024}),
}
CH07_TEAM = {"loss_type": "grpo", "num_iterations": 4, "beta": 0.0, "num_generations": 8,
             "learning_rate": 1e-6, "adam_beta1": 0.9}


def test_ch07_config_reading():
    solution = {"group_size": 5, "inner_steps": 4, "aggregation": "token_mean"}
    assert check_config_reading(solution, CH07_VERL, trainer="verl").passed
    assert not check_config_reading(None, CH07_VERL, trainer="verl")
    one_step = check_config_reading({**solution, "inner_steps": 1}, CH07_VERL, trainer="verl")
    assert not one_step and "inner_steps" in one_step.message and "ppo_mini_batch_size" in one_step.hint
    assert not check_config_reading({"group_size": 5}, CH07_VERL, trainer="verl")
    assert not check_config_reading({**solution, "aggregation": "seq_mean_token_mean"}, CH07_VERL,
                                    trainer="verl")


def test_ch07_exposed_chapters():
    solution = {"A": {"ch03", "ch06"}, "B": {"ch04", "ch05", "ch06"}, "C": {"ch03", "ch06"}}
    assert check_exposed_chapters(solution, CH07_CANDIDATES).passed
    assert not check_exposed_chapters(None, CH07_CANDIDATES)
    wrong = check_exposed_chapters({**solution, "B": {"ch05", "ch06"}}, CH07_CANDIDATES)
    assert not wrong and "Configuration B" in wrong.message and "ch04" in wrong.message
    too_many = check_exposed_chapters({**solution, "A": {"ch03", "ch05", "ch06"}}, CH07_CANDIDATES)
    assert not too_many and "not exposed to ['ch05']" in too_many.message
    assert "Unknown chapter" in check_exposed_chapters({**solution, "A": {"ch9"}}, CH07_CANDIDATES).message
    assert not check_exposed_chapters({"A": set()}, CH07_CANDIDATES)


def test_ch07_config_change():
    assert check_config_change({"loss_type": "dapo", "num_iterations": 1}, CH07_TEAM).passed
    assert check_config_change({"loss_type": "dr_grpo", "num_iterations": 1}, CH07_TEAM).passed
    assert not check_config_change(None, CH07_TEAM)
    half = check_config_change({"loss_type": "dapo"}, CH07_TEAM)
    assert not half and "ch05" in half.message
    optimizer = check_config_change({"loss_type": "dapo", "adam_beta1": 0.0}, CH07_TEAM)
    assert not optimizer and "adam_beta1" in optimizer.message
    many = check_config_change({"loss_type": "dapo", "num_iterations": 1, "beta": 0.04}, CH07_TEAM)
    assert not many and "at most 2" in many.message
    invalid = check_config_change({"loss_type": "ppo", "num_iterations": 1}, CH07_TEAM)
    assert not invalid and "not valid" in invalid.message


# --- chapter 8 ---
from companion.exercises import (  # noqa: E402
    ch08_length_curve,
    ch08_visible_biases,
    check_length_prediction,
    check_prefix_fix,
    check_run_diagnosis,
)

CH08_READINGS = {"w_agg_format_max": 0.0, "eps_dominated_moving": 0.41, "inner_steps": 4,
                 "past_clip_after_last": 0.06, "beta1": 0.9}


def test_ch08_visible_biases_follow_each_reading():
    assert ch08_visible_biases(CH08_READINGS) == {"ch04", "ch05", "ch06"}
    quiet = {**CH08_READINGS, "eps_dominated_moving": 0.002, "inner_steps": 1}
    assert ch08_visible_biases(quiet) == {"ch06"}
    assert "ch03" in ch08_visible_biases({**quiet, "w_agg_format_max": 0.01})
    assert "ch05" not in ch08_visible_biases({**CH08_READINGS, "beta1": 0.0})
    assert "ch05" not in ch08_visible_biases({**CH08_READINGS, "past_clip_after_last": 0.0})
    with pytest.raises(ValueError, match="missing"):
        ch08_visible_biases({"inner_steps": 2})


def test_ch08_check_run_diagnosis():
    assert check_run_diagnosis({"ch04", "ch05", "ch06"}, CH08_READINGS).passed
    assert check_run_diagnosis(["CH05", "ch04 ", "ch06"], CH08_READINGS).passed
    missing = check_run_diagnosis({"ch04", "ch05"}, CH08_READINGS)
    assert not missing and "missing ['ch06']" in missing.message
    extra = check_run_diagnosis({"ch03", "ch04", "ch05", "ch06"}, CH08_READINGS)
    assert not extra and "not shown: ['ch03']" in extra.message
    assert "Unknown" in check_run_diagnosis({"ch9"}, CH08_READINGS).message
    assert not check_run_diagnosis(None, CH08_READINGS) and not check_run_diagnosis(3, CH08_READINGS)


def test_ch08_check_prefix_fix_accepts_every_constant_weight_and_nothing_else():
    for aggregation in ("token_mean", "token_sum", "seq_mean_token_sum", "constant"):
        assert check_prefix_fix({"aggregation": aggregation}).passed, aggregation
    for change in ({"std_scale": None}, {"clip_high": 0.28}, {"beta": 0.0}, {"surrogate": "log_prob"}):
        result = check_prefix_fix(change)
        assert not result and "still" in result.message, change
    assert "exactly one" in check_prefix_fix({"aggregation": "token_mean", "beta": 0.0}).message
    assert "Not a valid change" in check_prefix_fix({"aggregation": "median"}).message
    assert not check_prefix_fix(None)


def test_ch08_length_curve_needs_length_normalised_weights_and_a_telling_context():
    from companion.objective import Objective

    assert ch08_length_curve(Objective.preset("grpo_r1"), "knows") == "up"
    assert ch08_length_curve(Objective.preset("gspo"), "knows") == "up"
    for preset in ("dr_grpo", "dapo", "cispo", "bnpo"):
        assert ch08_length_curve(Objective.preset(preset), "knows") == "flat", preset
    assert ch08_length_curve(Objective.preset("grpo_r1"), "blind") == "flat"
    with pytest.raises(ValueError, match="start"):
        ch08_length_curve(Objective.preset("grpo_r1"), "sure")


def test_ch08_check_length_prediction():
    configs = {"A": ("grpo_r1", "blind"), "B": ("grpo_r1", "knows"), "C": ("dr_grpo", "knows")}
    assert check_length_prediction({"A": "flat", "B": "up", "C": "flat"}, configs).passed
    wrong = check_length_prediction({"A": "up", "B": "up", "C": "flat"}, configs)
    assert not wrong and "['A']" in wrong.message
    assert "one of" in check_length_prediction({"A": "flat", "B": "longer", "C": "flat"}, configs).message
    assert "keys" in check_length_prediction({"A": "flat"}, configs).message
    assert not check_length_prediction(None, configs)
