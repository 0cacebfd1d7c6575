"""The Eq. 1 reading of each TRL / verl configuration (the fields `objective_from_trl` / `objective_from_verl`
set), evaluated by eq1_eval.py without `Objective.loss`, reproduces the library references, and bad
configurations are rejected with the valid values."""

import pytest
import torch
from cases import (
    KL_CASES,
    KL_MIXED_AGG_CASES,
    TOL,
    TRL_LOSS_CASES,
    VERL_LOSS_CASES,
    assert_value_and_grad_match,
    case_id,
    random_batch,
    signed_advantages,
)
from eq1_eval import eq1_advantages, eq1_loss
from trl_reference import TRL_LOSS_TYPES, trl_advantages, trl_loss
from verl_reference import VERL_AGG_MODES, VERL_POLICY_LOSSES, verl_actor_loss, verl_advantages

from companion import trainers

READ_VERL_CASES = VERL_LOSS_CASES + KL_CASES + KL_MIXED_AGG_CASES


@pytest.mark.parametrize("cfg", TRL_LOSS_CASES, ids=[case_id(c) for c in TRL_LOSS_CASES])
def test_trl_reading_reproduces_trl(cfg):
    batch = random_batch(7)
    adv = signed_advantages(batch, 7)
    spec = trainers.objective_from_trl(**cfg)
    args = (batch.old_logprobs, adv, batch.mask, batch.ref_logprobs)
    assert_value_and_grad_match(
        lambda lp: eq1_loss(spec, lp, *args), lambda lp: trl_loss(lp, *args, **cfg), batch.logprobs
    )


@pytest.mark.parametrize("cfg", READ_VERL_CASES, ids=[case_id(c) for c in READ_VERL_CASES])
def test_verl_reading_reproduces_verl(cfg):
    batch = random_batch(8)
    adv = signed_advantages(batch, 8)
    spec = trainers.objective_from_verl(**cfg)
    args = (batch.old_logprobs, adv, batch.mask, batch.ref_logprobs)
    assert_value_and_grad_match(
        lambda lp: eq1_loss(spec, lp, *args), lambda lp: verl_actor_loss(lp, *args, **cfg), batch.logprobs
    )


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none", True, False])
def test_trl_advantage_reading(scale_rewards):
    batch = random_batch(9)
    spec = trainers.objective_from_trl(scale_rewards=scale_rewards)
    ours = eq1_advantages(spec, batch.rewards, batch.group_size)
    torch.testing.assert_close(
        ours, trl_advantages(batch.rewards, 4, scale_rewards=scale_rewards), atol=TOL, rtol=0
    )


@pytest.mark.parametrize(
    "cfg",
    [
        dict(adv_estimator="grpo"),
        dict(adv_estimator="grpo", norm_adv_by_std_in_grpo=False),
        dict(adv_estimator="rloo"),
        dict(adv_estimator="gpg"),
    ],
)
def test_verl_advantage_reading(cfg):
    batch = random_batch(10)
    ours = eq1_advantages(trainers.objective_from_verl(**cfg), batch.rewards, batch.group_size)
    torch.testing.assert_close(ours, verl_advantages(batch.rewards, 4, **cfg), atol=TOL, rtol=0)


def test_verl_reinforce_pp_reading_weighs_completions_by_length():
    batch = random_batch(11)
    spec = trainers.objective_from_verl(adv_estimator="reinforce_plus_plus")
    ours = eq1_advantages(spec, batch.rewards, 4, lengths=batch.mask.sum(-1)).unsqueeze(1) * batch.mask
    expected = verl_advantages(batch.rewards, 4, adv_estimator="reinforce_plus_plus", mask=batch.mask)
    torch.testing.assert_close(ours, expected, atol=TOL, rtol=0)


# ---- rejection of what the translation does not cover ---------------------------------------------------

BUILDERS = {"trl": trainers.objective_from_trl, "verl": trainers.objective_from_verl}


@pytest.mark.parametrize(
    ("library", "field", "value", "valid"),
    [
        ("trl", "loss_type", "vespo", TRL_LOSS_TYPES),
        ("trl", "loss_type", "gspo", TRL_LOSS_TYPES),
        ("trl", "importance_sampling_level", "sentence", ("token", "sequence")),
        ("trl", "scale_rewards", "global", ("group", "batch", "none")),
        ("verl", "policy_loss", "clip_cov", VERL_POLICY_LOSSES),
        ("verl", "loss_agg_mode", "mean", VERL_AGG_MODES),
        ("verl", "kl_loss_type", "full", ("kl", "k1", "mse", "k2", "low_var_kl", "k3")),
        ("verl", "adv_estimator", "gae", ("grpo", "rloo", "gpg", "reinforce_plus_plus")),
    ],
)
def test_unsupported_values_name_the_valid_ones(library, field, value, valid):
    with pytest.raises(ValueError, match=field) as info:
        BUILDERS[library](**{field: value})
    assert all(repr(v) in str(info.value) for v in valid)


@pytest.mark.parametrize(
    ("library", "field", "supported"),
    [
        ("trl", "loss_typ", trainers.TRL_FIELDS),
        ("trl", "top_entropy_quantile", trainers.TRL_FIELDS),
        ("verl", "clip_ratio_lo", trainers.VERL_FIELDS),
        ("verl", "entropy_coeff", trainers.VERL_FIELDS),
    ],
)
def test_unknown_fields_name_the_supported_ones(library, field, supported):
    with pytest.raises(TypeError, match=field) as info:
        BUILDERS[library](**{field: 1})
    assert all(repr(f) in str(info.value) for f in supported)


@pytest.mark.parametrize(
    ("library", "cfg"),
    [
        ("trl", dict(epsilon=-0.1)),
        ("trl", dict(beta=-0.01)),
        ("trl", dict(max_completion_length=0)),
        ("trl", dict(delta=0.0)),
        ("trl", dict(sapo_temperature_pos=0.0)),
        ("verl", dict(clip_ratio_c=1.0)),
        ("verl", dict(clip_ratio_low=-0.1)),
        ("verl", dict(kl_loss_coef=-1.0)),
        ("verl", dict(loss_scale_factor=0)),
        ("verl", dict(tau_neg=0.0)),
    ],
)
def test_out_of_range_values_are_rejected(library, cfg):
    with pytest.raises(ValueError, match=next(iter(cfg))):
        BUILDERS[library](**cfg)


def test_non_numbers_are_a_type_error():
    with pytest.raises(TypeError, match="epsilon"):
        trainers.objective_from_trl(epsilon="0.2")
