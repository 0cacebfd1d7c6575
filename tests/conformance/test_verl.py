"""`cp.Objective.from_verl(...)` computes what verl 0.9.1's actor computes (SPEC.md), to 1e-6."""

import pytest
import torch
from cases import (
    KL_CASES,
    KL_EXTRA_TYPES,
    KL_MIXED_AGG_CASES,
    TOL,
    VERL_LOSS_CASES,
    assert_value_and_grad_match,
    case_id,
    random_batch,
    signed_advantages,
)
from verl_reference import VERL_POLICY_LOSSES, verl_actor_loss, verl_advantages

import companion as cp


def _check_loss(cfg: dict, seed: int, tokenwise_advantages: bool = False) -> None:
    batch = random_batch(seed)
    adv = signed_advantages(batch, seed)
    given = (
        adv.unsqueeze(1) * batch.mask if tokenwise_advantages else adv
    )  # verl hands the actor scalar * mask
    objective = cp.Objective.from_verl(**cfg)
    ref_logprobs = batch.ref_logprobs if cfg.get("use_kl_loss") else None

    def ours(logprobs):
        return objective.loss(logprobs, batch.old_logprobs, given, batch.mask, ref_logprobs=ref_logprobs).loss

    def reference(logprobs):
        return verl_actor_loss(logprobs, batch.old_logprobs, adv, batch.mask, batch.ref_logprobs, **cfg)

    assert_value_and_grad_match(ours, reference, batch.logprobs)


@pytest.mark.parametrize("cfg", VERL_LOSS_CASES, ids=[case_id(c) for c in VERL_LOSS_CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_value_and_gradient_match_verl(cfg, seed):
    _check_loss(cfg, seed)


@pytest.mark.parametrize("cfg", KL_CASES, ids=[case_id(c) for c in KL_CASES])
def test_kl_loss_value_and_gradient_match_verl(cfg):
    _check_loss(cfg, seed=2)


@pytest.mark.parametrize("cfg", KL_MIXED_AGG_CASES, ids=[case_id(c) for c in KL_MIXED_AGG_CASES])
def test_kl_with_a_policy_loss_that_ignores_loss_agg_mode(cfg):
    _check_loss(cfg, seed=3)


@pytest.mark.parametrize("cfg", KL_EXTRA_TYPES, ids=[case_id(c) for c in KL_EXTRA_TYPES])
def test_abs_and_straight_through_kl_types(cfg):
    _check_loss(cfg, seed=4)


@pytest.mark.parametrize("policy_loss", VERL_POLICY_LOSSES)
def test_token_level_advantages_as_verl_passes_them(policy_loss):
    _check_loss(
        dict(policy_loss=policy_loss, loss_agg_mode="seq-mean-token-sum"), seed=5, tokenwise_advantages=True
    )


@pytest.mark.parametrize(
    "cfg",
    [
        dict(adv_estimator="grpo"),
        dict(adv_estimator="grpo", norm_adv_by_std_in_grpo=False),
        dict(adv_estimator="rloo"),
        dict(adv_estimator="gpg"),
    ],
    ids=case_id,
)
@pytest.mark.parametrize("seed", [0, 1])
def test_outcome_advantages_match_verl(cfg, seed):
    batch = random_batch(seed)
    ours = cp.Objective.from_verl(**cfg).advantages(batch.rewards, group_size=batch.group_size)
    expected = verl_advantages(batch.rewards, batch.group_size, **cfg)
    torch.testing.assert_close(ours, expected, atol=TOL, rtol=0)


def test_reinforce_pp_advantages_match_verl():
    """verl whitens token-level returns: each completion weighs |o_i|, Bessel over the token count."""
    batch = random_batch(6)
    objective = cp.Objective.from_verl(adv_estimator="reinforce_plus_plus")
    ours = objective.advantages(batch.rewards, group_size=4, mask=batch.mask)
    expected = verl_advantages(batch.rewards, 4, adv_estimator="reinforce_plus_plus", mask=batch.mask)
    torch.testing.assert_close(ours.unsqueeze(1) * batch.mask, expected, atol=TOL, rtol=0)


def test_from_verl_rejects_what_the_translation_rejects():
    """Objective.from_verl delegates to companion.trainers (whose checks test_trainer_reading.py covers)."""
    with pytest.raises(ValueError, match="policy_loss"):
        cp.Objective.from_verl(policy_loss="clip_cov")
    with pytest.raises(TypeError, match="entropy_coeff"):
        cp.Objective.from_verl(entropy_coeff=0.01)
