"""companion.r1zero: the scale knob, the four recipes, the pretrained start and one run of each recipe."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from companion import r1zero
from companion.lab import Batch


def test_pick_chooses_the_gpu_setting_when_cuda_is_there():
    assert r1zero.Scale.pick(cuda=True) == r1zero.Scale.gpu()
    assert r1zero.Scale.pick(cuda=False) == r1zero.Scale.cpu()
    assert r1zero.Scale.pick() == (r1zero.Scale.gpu() if torch.cuda.is_available() else r1zero.Scale.cpu())
    gpu, cpu = r1zero.Scale.gpu(), r1zero.Scale.cpu()
    for field in ("n_layer", "n_embd", "seeds", "group_size", "prompts_per_step", "steps", "inner_steps"):
        assert getattr(gpu, field) >= getattr(cpu, field), field
    assert gpu.steps >= 10 * cpu.steps


@pytest.mark.parametrize(("change", "word"), [
    ({"seeds": 0}, "seeds"), ({"group_size": 1}, "group_size"), ({"n_head": 3}, "multiple of n_head"),
    ({"target_accuracy": 1.0}, "target_accuracy"), ({"steps": 2.5}, "steps"),
])
def test_bad_scales_are_named(change, word):
    with pytest.raises(ValueError, match=word):
        dataclasses.replace(r1zero.Scale.cpu(), **change)


def test_the_recipes_are_the_presets_and_the_takeaways():
    scale = r1zero.Scale.cpu()
    recipes = r1zero.recipes(scale)
    assert list(recipes) == ["GRPO", "Dr GRPO", "DAPO", "takeaways"]
    assert recipes["GRPO"].objective.with_(name="grpo_r1") == r1zero.Objective.preset("grpo_r1")
    assert all(r.inner_steps == scale.inner_steps for n, r in recipes.items() if n != "takeaways")
    takeaways = recipes["takeaways"]
    assert takeaways.inner_steps == 1 and takeaways.objective.beta == 0.0
    assert takeaways.objective.std_scale is None and takeaways.objective.aggregation == "seq_mean_token_sum"
    optimizer = takeaways.optimizer()([torch.nn.Parameter(torch.zeros(3))])
    assert optimizer.defaults["weight_decay"] == 0.0 and optimizer.defaults["lr"] == scale.lr


def test_lengths_by_correctness_by_hand():
    mask = torch.zeros(2, 4, 6)
    for s, lengths in enumerate(([2, 4, 6, 3], [5, 5, 1, 2])):
        for i, n in enumerate(lengths):
            mask[s, i, :n] = 1
    correct = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])
    batch = Batch(prompt_idx=torch.zeros(2, 4, dtype=torch.long), completions=torch.zeros(2, 4, 6),
                  mask=mask, rewards=correct, correct=correct, advantages=correct, ref_logprobs=mask,
                  group_size=4)
    right, wrong = r1zero.lengths_by_correctness(batch)
    assert right[0].item() == 4.0 and wrong[0].item() == 3.5
    assert math.isnan(right[1].item()) and wrong[1].item() == 3.25


def test_the_gpu_setting_runs_end_to_end_on_a_cpu_when_shrunk():
    """The branch a GPU takes, with its model, groups, batches and mu, for two steps."""
    scale = r1zero.Scale.gpu().shrunk()
    task = r1zero.make_task()
    start = r1zero.pretrain(scale, task, device="cpu", progress=False)
    assert start.steps == 2 and start.policy.num_seeds == 2
    assert start.policy.config.n_layer == 2 and start.policy.config.n_embd == 64
    before = {k: v.detach().clone() for k, v in start.policy.weights.items()}
    for name, recipe in r1zero.recipes(scale).items():
        run = r1zero.run(recipe, start.policy, task, scale, device="cpu", progress=False)
        history = run.history
        assert len(history) == scale.steps * recipe.inner_steps, name
        assert history["reward"].shape == (len(history), 2)
        for column in ("past_clip_after", "kl_old_after", "opt_eps_dominated_frac", "opt_momentum_only_frac",
                       "prefix_prob"):
            assert column in history, (name, column)
        assert run.length_correct.shape == run.length_incorrect.shape == (scale.steps, 2)
        assert len(run.batches) == scale.steps and run.batches[0].completions.shape[1] == 16 * 8
        assert run.optimizer.history["step"][-1] == scale.steps * recipe.inner_steps
    for key, value in start.policy.weights.items():
        assert torch.equal(value, before[key])  # every run trains a copy


def test_pretraining_stops_at_the_target_accuracy():
    scale = dataclasses.replace(r1zero.Scale.cpu(), seeds=2, sft_round=20, target_accuracy=0.3)
    start = r1zero.pretrain(scale, r1zero.make_task(), progress=False)
    assert start.accuracy_by_round[-1] >= 0.3 > max(start.accuracy_by_round[:-1], default=0.0)
    assert start.steps == 20 * len(start.accuracy_by_round) and start.loss.shape == (start.steps, 2)
    assert np.isclose(start.evaluation.accuracy.mean(), start.accuracy_by_round[-1])
