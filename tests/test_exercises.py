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
