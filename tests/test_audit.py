"""companion.audit and `python -m companion audit`: TRL's and verl's default configurations, a training
script's command line, GTPO's public recipe (Adam β1 = β2 = 0.999999), and malformed files."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import companion as cp
from companion import _trainer_fields as known
from companion import audit as au
from companion import theory

CONFIGS = Path(__file__).parent / "audit_configs"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "companion", "audit", *args], capture_output=True, text=True,
                          timeout=120)


# --- real configurations --------------------------------------------------------------------------------
def test_trl_defaults():
    report = au.audit(CONFIGS / "trl_defaults.json")
    c = report.config
    assert (c.trainer, c.group_size, c.inner_steps, c.max_completion_length) == ("trl", 8, 1, 512)
    assert c.objective == cp.Objective.from_trl()
    assert report.table1_row.startswith("closest: DAPO, differing in clip_high")
    assert "BNPO (TRL)" in report.table1_row
    assert report.exposed == {"ch06"}  # token-mean weights: no prefix bias; σ-normalised; one step per batch
    assert "Cov(A, Ω)" in report.finding("ch06").summary  # the loss is a length statistic, not 0


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is not installed")
def test_trl_defaults_as_trl_serialises_them(tmp_path):
    """Every field of a GRPOConfig, as TRL writes it (to_dict), is known to the audit."""
    import warnings

    from trl import GRPOConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, activation_checkpointing=False)
    assert [f.name for f in dataclasses.fields(GRPOConfig)] == list(known.TRL_GRPO_CONFIG_FIELDS)
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config.to_dict()))
    report = au.audit(path)
    assert report.config.objective == cp.Objective.from_trl()
    assert report.exposed == {"ch06"}


def test_verl_defaults():
    report = au.audit(CONFIGS / "verl_defaults.yaml")
    c = report.config
    assert (c.trainer, c.group_size, c.inner_steps) == ("verl", 1, 4)  # 1024 prompts / mini-batches of 256
    assert not c.group_advantages and "gae" in c.notes[0]
    assert c.objective == cp.Objective.from_verl()
    assert report.exposed == {"ch05", "ch06"}
    assert not report.finding("ch03").exposed


@pytest.mark.skipif(importlib.util.find_spec("verl") is None, reason="verl is not installed")
def test_verls_own_default_file():
    import verl

    path = Path(verl.__file__).parent / "trainer" / "config" / "_generated_ppo_trainer.yaml"
    report = au.audit(path)
    fixture = au.audit(CONFIGS / "verl_defaults.yaml")
    assert report.config.objective == fixture.config.objective
    assert report.exposed == fixture.exposed
    assert dataclasses.replace(report.config, fields={}) == dataclasses.replace(fixture.config, fields={})


def test_verl_grpo_script():
    report = au.audit(CONFIGS / "verl_grpo.sh")
    c = report.config
    assert (c.group_size, c.inner_steps, c.max_completion_length) == (5, 4, 1024)
    assert c.objective.beta == 0.001 and c.objective.kl == "k3"
    assert report.exposed == {"ch05", "ch06"}
    drift = theory.drift_after_vanishing(0.9, 0.999, 1000, 3)
    assert any(f"{drift:.3g}·lr" in n for n in report.finding("ch05").numbers)


def test_trl_script_command_line():
    report = au.audit(CONFIGS / "trl_grpo.sh")
    c = report.config
    assert c.fields["report_to"] == ["wandb", "tensorboard"] and c.fields["bf16"] is True
    assert c.objective == cp.Objective.from_trl(loss_type="grpo", beta=0.04, max_completion_length=1024)
    assert c.inner_steps == 2
    assert report.exposed == {"ch03", "ch05", "ch06"}
    net, _ = au.shared_prefix_push(c.objective, 8, 256, 1024)
    assert net == pytest.approx(0.6)  # α ∝ 1/|o_i|: (1/256 − 1/1024) / (1/256 + 1/1024)
    assert "60%" in report.finding("ch03").numbers[0]


def test_gtpo_recipe():
    report = au.audit(CONFIGS / "gtpo_recipe.yaml")
    c = report.config
    assert c.betas == (0.999999, 0.999999) and c.optimizer == "paged_adamw_8bit" and c.adam
    numbers = " ".join(report.finding("ch05").numbers)
    assert f"{theory.c_t_limit(0.999999, 0.999999):.7g}" == "0.9999995" and "= 0.9999995 (Eq. 33)" in numbers
    assert f"{theory.c_t(0.999999, 0.999999, 10):.4g}" == "0.9487" and "0.9487" in numbers  # √(9/10)
    assert "averages about 1e+06 steps" in numbers
    assert c.inner_steps == 1 and not report.finding("ch05").exposed  # μ = 1: the clip never acts


def test_gtpo_recipe_with_inner_steps_is_exposed(tmp_path):
    text = (CONFIGS / "gtpo_recipe.yaml").read_text().replace("num_iterations: 1", "num_iterations: 4")
    path = tmp_path / "gtpo_mu4.yaml"
    path.write_text(text)
    finding = au.audit(path).finding("ch05")
    assert finding.exposed
    drift = theory.drift_after_vanishing(0.999999, 0.999999, 1000, 3)
    assert drift > 2.99 and any(f"{drift:.3g}·lr" in n for n in finding.numbers)


def test_grpo_loss_cannot_move_with_beta_zero_and_one_step():
    report = au.audit({"loss_type": "grpo"})
    assert report.finding("ch06").summary.startswith("the logged loss cannot move at all")
    with_kl = au.audit({"loss_type": "grpo", "beta": 0.04})
    assert "plus β·KL" in with_kl.finding("ch06").summary


def test_reward_scale_finding_without_sigma():
    report = au.audit({"loss_type": "dr_grpo", "scale_rewards": "none", "max_completion_length": 256},
                      sqrt_v_hat=1e-5)
    finding = report.finding("ch04")
    assert finding.exposed
    assert any("0.26 (with √v̂ = 1e-05)" in n for n in finding.numbers)  # 1e-8 / (1/256 · 1e-5)
    scaled = au.audit({"loss_type": "dr_grpo"})
    assert not scaled.finding("ch04").exposed


def test_cli_prints_the_report_and_exits_zero():
    result = run_cli(str(CONFIGS / "trl_grpo.sh"), "--sqrt-v-hat", "1e-5")
    assert result.returncode == 0, result.stderr
    for chapter in au.CHAPTERS:
        assert f"[{chapter}]" in result.stdout
    assert "Eq. 1 reading" in result.stdout and "(read ch03)" in result.stdout and not result.stderr


# --- malformed files ------------------------------------------------------------------------------------
MALFORMED = [
    ("typo.json", '{"loss_typ": "grpo"}', r"unknown field.*'loss_typ'.*did you mean.*'loss_type'"),
    ("twice.yaml", "beta: 0.0\nbeta: 0.04\n", r"contradictory.*\['beta'\] more than once"),
    ("twice.json", '{"beta": 0.0, "beta": 0.04}', r"contradictory.*\['beta'\] more than once"),
    ("twice.sh", "python train.py --beta 0 --beta 0.04", r"contradictory.*'beta' more than once"),
    ("broken.json", '{"beta": 0.0', r"not valid JSON"),
    ("broken.yaml", "beta: [0.0\n", r"not valid YAML"),
    ("list.yaml", "- beta\n- loss_type\n", r"must hold a mapping"),
    ("precision.json", '{"fp16": true, "bf16": true}', r"contradictory: fp16=True and bf16=True"),
    ("batch.json", '{"num_generations": 8, "per_device_train_batch_size": 4}', r"not a multiple of num_gen"),
    ("loss.json", '{"loss_type": "ppo"}', r"loss_type='ppo'.*'grpo'"),
    ("beta.json", '{"adam_beta1": 1.0}', r"adam_beta1 must be in \[0, 1\)"),
    ("mixed.yaml", "loss_type: grpo\nalgorithm:\n  adv_estimator: grpo\n", r"contradictory.*mixes verl"),
    ("verl_typo.yaml", "actor_rollout_ref:\n  actor:\n    loss_agg: token-mean\n",
     r"unknown field.*actor_rollout_ref\.actor\.loss_agg"),
    ("verl_optim.sh", "python3 -m verl.trainer.main_ppo actor_rollout_ref.actor.optim.beta1=0.9",
     r"unknown field.*optim\.beta1"),
    ("verl_batch.yaml", "data:\n  train_batch_size: 100\nactor_rollout_ref:\n  actor:\n"
     "    ppo_mini_batch_size: 64\n", r"contradictory: data\.train_batch_size=100"),
    ("verl_group.yaml", "algorithm:\n  adv_estimator: grpo\n", r"contradictory.*rollout\.n=1"),
    ("verl_clip.yaml", "actor_rollout_ref:\n  actor:\n    clip_ratio_c: 0.5\n", r"clip_ratio_c must be > 1"),
]


@pytest.mark.parametrize(("name", "text", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_are_named_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(au.AuditError, match=message):
        au.audit(path)


def test_recipe_with_its_own_field_names_is_rejected_with_suggestions():
    with pytest.raises(au.AuditError) as info:
        au.audit(CONFIGS / "gtpo_recipe_verbatim.yaml")
    text = str(info.value)
    assert "['max_prompt_length', 'optimizer', 'warmup_ratio']" in text and "'optimizer' → 'optim'" in text


def test_cli_reports_errors_on_stderr_with_exit_code_2(tmp_path):
    path = tmp_path / "typo.json"
    path.write_text('{"loss_typ": "grpo"}')
    result = run_cli(str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: unknown field") and "loss_typ" in result.stderr
    missing = run_cli(str(tmp_path / "nothing.yaml"))
    assert missing.returncode == 2 and "no configuration file" in missing.stderr
    usage = subprocess.run([sys.executable, "-m", "companion"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "audit CONFIG" in usage.stderr


def test_forced_trainer_and_bad_arguments():
    with pytest.raises(au.AuditError, match="trainer must be one of"):
        au.audit({}, trainer="deepspeed")
    with pytest.raises(au.AuditError, match="sqrt_v_hat"):
        au.audit({}, sqrt_v_hat=0.0)
    assert au.audit({}, trainer="verl").config.trainer == "verl"


# --- the numbers behind the findings ----------------------------------------------------------------------
def test_first_step_loss_is_measured_not_assumed():
    """GRPO's weights give 0 at s = 1 (Eq. 9); DAPO's and SAPO's do not (Eq. 10 / an asymmetric gate)."""
    assert au.first_step_loss_range(cp.Objective.from_trl(loss_type="grpo"), 8) < 1e-12
    assert au.first_step_loss_range(cp.Objective.from_trl(loss_type="dapo"), 8) > 1e-3
    assert au.first_step_loss_range(cp.Objective.from_trl(loss_type="sapo"), 8) > 1e-3


def test_shared_prefix_push_against_a_direct_sum():
    obj = cp.Objective.preset("grpo_r1", beta=0.0)
    net, w_agg = au.shared_prefix_push(obj, 4, 2, 8)
    adv = obj.advantages(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64), 4)
    direct = sum(float(a) / (4 * n) for a, n in zip(adv, (2, 2, 8, 8), strict=True))
    assert w_agg == pytest.approx(direct) and net == pytest.approx(0.6)
    assert math.isclose(au.shared_prefix_push(cp.Objective.preset("dapo"), 4, 2, 8)[0], 0.0, abs_tol=1e-12)


def test_vendored_field_lists_match_the_installed_libraries():
    if importlib.util.find_spec("trl") is None:
        pytest.skip("TRL is not installed")
    import trl.scripts.grpo as script
    from trl import DatasetMixtureConfig, GRPOConfig, ModelConfig

    assert list(known.TRL_GRPO_CONFIG_FIELDS) == [f.name for f in dataclasses.fields(GRPOConfig)]
    names = {f.name for cls in (ModelConfig, script.GRPOScriptArguments, DatasetMixtureConfig)
             for f in dataclasses.fields(cls)}
    assert set(known.TRL_SCRIPT_FIELDS) == names
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    for name, value in au.TRL_DEFAULTS.items():
        assert defaults[name] == value, name
