"""`cp.Objective.from_trl(...)` computes what TRL 1.16.0's GRPOTrainer computes (SPEC.md), to 1e-6."""

import pytest
import torch
from cases import TOL, TRL_LOSS_CASES, assert_value_and_grad_match, case_id, random_batch, signed_advantages
from trl_reference import trl_advantages, trl_loss

import companion as cp


@pytest.mark.parametrize("cfg", TRL_LOSS_CASES, ids=[case_id(c) for c in TRL_LOSS_CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_value_and_gradient_match_trl(cfg, seed):
    batch = random_batch(seed)
    adv = signed_advantages(batch, seed)
    objective = cp.Objective.from_trl(**cfg)
    ref_logprobs = batch.ref_logprobs if cfg.get("beta", 0.0) else None

    def ours(logprobs):
        return objective.loss(logprobs, batch.old_logprobs, adv, batch.mask, ref_logprobs=ref_logprobs).loss

    def reference(logprobs):
        return trl_loss(logprobs, batch.old_logprobs, adv, batch.mask, batch.ref_logprobs, **cfg)

    assert_value_and_grad_match(ours, reference, batch.logprobs)


def test_token_level_advantages_are_accepted_like_trl():
    """TRL takes (B,) or (B, T) advantages; a (B, T) broadcast of (B,) gives the same loss."""
    batch = random_batch(3)
    adv = signed_advantages(batch, 3)
    objective = cp.Objective.from_trl(loss_type="grpo", beta=0.04)
    tokenwise = adv.unsqueeze(1).expand_as(batch.logprobs).contiguous()

    def ours(logprobs):
        return objective.loss(logprobs, batch.old_logprobs, tokenwise, batch.mask, batch.ref_logprobs).loss

    def reference(logprobs):
        return trl_loss(
            logprobs, batch.old_logprobs, adv, batch.mask, batch.ref_logprobs, loss_type="grpo", beta=0.04
        )

    assert_value_and_grad_match(ours, reference, batch.logprobs)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none", True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_advantages_match_trl(scale_rewards, seed):
    batch = random_batch(seed)
    objective = cp.Objective.from_trl(scale_rewards=scale_rewards)
    ours = objective.advantages(batch.rewards, group_size=batch.group_size)
    expected = trl_advantages(batch.rewards, batch.group_size, scale_rewards=scale_rewards)
    torch.testing.assert_close(ours, expected, atol=TOL, rtol=0)
    assert torch.all(ours[-batch.group_size :] == 0)  # the tied group


def test_defaults_are_trl_defaults():
    """from_trl() with no argument is GRPOConfig()'s loss: dapo, eps 0.2, beta 0, scale_rewards group."""
    batch = random_batch(5)
    adv = trl_advantages(batch.rewards, batch.group_size)
    objective = cp.Objective.from_trl()
    torch.testing.assert_close(objective.advantages(batch.rewards, group_size=batch.group_size), adv)

    def ours(logprobs):
        return objective.loss(logprobs, batch.old_logprobs, adv, batch.mask).loss

    def reference(logprobs):
        return trl_loss(logprobs, batch.old_logprobs, adv, batch.mask)

    assert_value_and_grad_match(ours, reference, batch.logprobs)


def test_from_trl_rejects_what_the_translation_rejects():
    """Objective.from_trl delegates to companion.trainers (whose checks test_trainer_reading.py covers)."""
    with pytest.raises(ValueError, match="loss_type"):
        cp.Objective.from_trl(loss_type="vespo")
    with pytest.raises(TypeError, match="top_entropy_quantile"):
        cp.Objective.from_trl(top_entropy_quantile=0.2)
