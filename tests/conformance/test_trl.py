"""`cp.Objective.from_trl(...)` computes what TRL 1.16.0's GRPOTrainer computes (SPEC.md), to 1e-6."""

import pytest
import torch
from cases import TOL, assert_value_and_grad_match, random_batch, signed_advantages
from trl_reference import TRL_LOSS_TYPES, trl_advantages, trl_loss

import companion as cp

LOSS_FIELDS = (
    "loss_type",
    "importance_sampling_level",
    "epsilon",
    "epsilon_high",
    "delta",
    "beta",
    "max_completion_length",
    "use_bias_correction_kl",
    "sapo_temperature_pos",
    "sapo_temperature_neg",
)


def _loss_cases() -> list[dict]:
    cases = [
        dict(loss_type=lt, importance_sampling_level=lvl)
        for lt in TRL_LOSS_TYPES
        for lvl in ("token", "sequence")
    ]
    cases += [
        {},  # every default: dapo, token level, epsilon 0.2
        dict(loss_type="dapo", epsilon_high=0.28),
        dict(loss_type="bnpo", epsilon=0.1, epsilon_high=0.3),
        dict(loss_type="grpo", delta=1.5),
        dict(loss_type="dapo", delta=2.0, epsilon_high=0.28),
        dict(loss_type="cispo", epsilon_high=1.3),
        dict(loss_type="cispo", epsilon_high=5.0),
        dict(loss_type="dr_grpo", max_completion_length=9),
        dict(loss_type="dr_grpo", max_completion_length=64),
        dict(loss_type="sapo", sapo_temperature_pos=2.0, sapo_temperature_neg=3.5),
    ]
    cases += [
        dict(loss_type=lt, beta=0.04, use_bias_correction_kl=bc, importance_sampling_level=lvl)
        for lt in ("grpo", "dapo", "dr_grpo")
        for bc in (False, True)
        for lvl in ("token", "sequence")
    ]
    cases += [dict(loss_type="sapo", beta=0.1), dict(loss_type="cispo", beta=0.1, epsilon_high=1.3)]
    return cases


LOSS_CASES = _loss_cases()


def _case_id(cfg: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "defaults"


@pytest.mark.parametrize("cfg", LOSS_CASES, ids=[_case_id(c) for c in LOSS_CASES])
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loss_type", "vespo"),
        ("loss_type", "luspo"),
        ("loss_type", "ppo"),
        ("importance_sampling_level", "sentence"),
        ("scale_rewards", "global"),
    ],
)
def test_unsupported_values_are_rejected_with_the_valid_ones(field, value):
    with pytest.raises(ValueError, match=field) as info:
        cp.Objective.from_trl(**{field: value})
    valid = {
        "loss_type": TRL_LOSS_TYPES,
        "importance_sampling_level": ("token", "sequence"),
        "scale_rewards": ("group", "batch", "none"),
    }[field]
    assert all(v in str(info.value) for v in valid)


@pytest.mark.parametrize("field", ["loss_typ", "top_entropy_quantile", "vllm_importance_sampling_correction"])
def test_unknown_fields_are_rejected_with_the_supported_ones(field):
    with pytest.raises(TypeError, match=field) as info:
        cp.Objective.from_trl(**{field: 1})
    assert all(f in str(info.value) for f in LOSS_FIELDS)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(epsilon=-0.1),
        dict(epsilon_high=-0.2),
        dict(beta=-0.01),
        dict(max_completion_length=0),
        dict(delta=0.0),
        dict(sapo_temperature_pos=0.0),
    ],
    ids=_case_id,
)
def test_out_of_range_values_are_rejected(cfg):
    (field,) = cfg
    with pytest.raises(ValueError, match=field):
        cp.Objective.from_trl(**cfg)
