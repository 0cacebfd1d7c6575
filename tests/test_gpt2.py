"""StackedGPT2Policy: S GPT-2s in one tensor program, checked against transformers' GPT-2 seed by seed."""

import math

import pytest
import torch

from companion.gpt2 import StackedGPT2Policy
from companion.lab import train
from companion.objective import Objective
from companion.policies import TinyGPT2Policy, num_parameters
from companion.tasks import make_task

F64 = torch.float64


def gens(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + s) for s in range(n)]


def think():
    return make_task("think", template="#", template_mode="sampled")


def batch(task, policy, seed=0, prompts=3, group=4):
    g = gens(seed, policy.num_seeds)
    prompt_idx = torch.stack([task.sample_prompts(prompts, x) for x in g])
    completions = policy.sample(task, prompt_idx, group, g)
    return prompt_idx.repeat_interleave(group, dim=1), completions


@pytest.mark.parametrize(("n_layer", "n_embd", "n_head"), [(1, 32, 2), (2, 16, 4)])
def test_logprobs_equal_transformers_gpt2_seed_by_seed_in_float64(n_layer, n_embd, n_head):
    task = think()
    stacked = StackedGPT2Policy.for_task(task, num_seeds=3, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                         seed=7).double()
    singles = [TinyGPT2Policy.for_task(task, n_layer=n_layer, n_embd=n_embd, n_head=n_head, seed=7 + s)
               for s in range(3)]
    prompt_idx, completions = batch(task, stacked)
    assert (task.completion_mask(completions).sum(-1) < task.max_new_tokens).any()  # padding is exercised
    logp, entropy = stacked.logprobs(task, prompt_idx, completions)
    for s, single in enumerate(singles):
        ref_logp, ref_entropy = single.double().logprobs(task, prompt_idx[s:s + 1], completions[s:s + 1])
        assert torch.allclose(logp[s], ref_logp[0], atol=1e-12, rtol=0)
        assert torch.allclose(entropy[s], ref_entropy[0], atol=1e-12, rtol=0)


def test_float32_logprobs_agree_with_transformers_and_seeds_start_as_tiny_gpt2():
    task = think()
    stacked = StackedGPT2Policy.for_task(task, num_seeds=2, seed=3)
    single = TinyGPT2Policy.for_task(task, n_layer=1, n_embd=32, n_head=2, seed=4)
    for name, value in single.model.state_dict().items():
        if name != "lm_head.weight" and value.is_floating_point():
            assert torch.equal(stacked.weights[name.replace(".", "__")][1], value), name
    prompt_idx, completions = batch(task, stacked, seed=2)
    logp, _ = stacked.logprobs(task, prompt_idx, completions)
    ref, _ = single.logprobs(task, prompt_idx[1:], completions[1:])
    assert torch.allclose(logp[1], ref[0], atol=2e-6)
    assert num_parameters(stacked) == num_parameters(single)  # the tied head counted once in both


def test_unstack_and_from_policies_round_trip():
    task = think()
    stacked = StackedGPT2Policy.for_task(task, num_seeds=3, seed=0)
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(0.01 * torch.randn_like(p))
    again = StackedGPT2Policy.from_policies([stacked.unstack(s) for s in range(3)])
    for key, value in stacked.weights.items():
        assert torch.equal(again.weights[key], value)
    one = stacked.unstack(2)
    prompt_idx, completions = batch(task, stacked)
    assert torch.allclose(one.logprobs(task, prompt_idx[2:], completions[2:])[0][0],
                          stacked.logprobs(task, prompt_idx, completions)[0][2], atol=2e-6)
    with pytest.raises(IndexError, match="seed index 3"):
        stacked.unstack(3)


def test_sampling_is_seeded_respects_the_budget_and_follows_the_model():
    task = think()
    policy = StackedGPT2Policy.for_task(task, num_seeds=2, seed=1)
    prompts = torch.tensor([[0, 7], [3, 3]])
    a = policy.sample(task, prompts, 5, gens(0, 2))
    assert torch.equal(a, policy.sample(task, prompts, 5, gens(0, 2)))
    assert not torch.equal(a, policy.sample(task, prompts, 5, gens(1, 2)))
    assert a.shape == (2, 10, task.max_new_tokens) and int(a.max()) <= task.eos_id
    assert (a[..., :task.min_new_tokens] != task.eos_id).all()
    after_eos = (torch.cumsum((a == task.eos_id).long(), -1) > 0)
    assert (a[after_eos] == task.eos_id).all()
    forced = policy.sample(task, prompts, 3, gens(0, 2), prefix=torch.full((2, 2, 1), 2))
    assert (forced[..., 0] == 2).all()
    # the first token's frequencies over many samples match the model's probabilities
    many = policy.sample(task, torch.zeros(2, 1, dtype=torch.long), 4000, gens(5, 2), max_new_tokens=1)
    probe = torch.arange(task.eos_id).view(1, -1, 1).expand(2, -1, 1)
    probs = policy.logprobs(task, torch.zeros(2, task.eos_id, dtype=torch.long), probe)[0][..., 0]
    probs = probs.exp().detach()
    freq = torch.stack([(many[..., 0] == v).float().mean(-1) for v in range(task.eos_id)], -1)
    assert torch.allclose(freq, probs, atol=4 * math.sqrt(0.25 / 4000))
    assert math.isclose(float(probs.sum(-1)[0]), 1.0, rel_tol=1e-5)  # EOS is not allowed first


def test_seeds_never_mix_a_lab_run_equals_separate_runs():
    task = think()
    objective = Objective.preset("dr_grpo")
    together = StackedGPT2Policy.for_task(task, num_seeds=2, seed=0)
    hist = train(together, task, objective, steps=2, group_size=4, prompts_per_step=2, inner_steps=2,
                 lr=1e-3, device="cpu", seed=10)
    for s in range(2):
        alone = StackedGPT2Policy.for_task(task, num_seeds=1, seed=s)
        single = train(alone, task, objective, steps=2, group_size=4, prompts_per_step=2, inner_steps=2,
                       lr=1e-3, device="cpu", seed=10 + s)
        assert torch.allclose(torch.as_tensor(hist["loss"][:, s]), torch.as_tensor(single["loss"]), atol=1e-5)
        for key, value in alone.weights.items():
            assert torch.allclose(together.weights[key][s], value[0], atol=1e-5), key


def test_bad_input_is_named():
    task = think()
    with pytest.raises(ValueError, match="num_seeds"):
        StackedGPT2Policy.for_task(task, num_seeds=0)
    with pytest.raises(ValueError, match="at least one"):
        StackedGPT2Policy([])
    mixed = [TinyGPT2Policy.for_task(task, n_embd=32, n_layer=1, n_head=2),
             TinyGPT2Policy.for_task(task, n_embd=16, n_layer=1, n_head=2)]
    with pytest.raises(ValueError, match="same vocab and GPT2Config"):
        StackedGPT2Policy.from_policies(mixed)
    with pytest.raises(TypeError, match="TinyGPT2Policy"):
        StackedGPT2Policy([object()])
    short = StackedGPT2Policy.for_task(task, num_seeds=1, n_positions=8)
    with pytest.raises(ValueError, match="n_positions"):
        short.sample(task, torch.zeros(1, 1, dtype=torch.long), 2, gens(0, 1))
    with pytest.raises(ValueError, match="vocab"):
        short.sample(make_task("pick"), torch.zeros(1, 1, dtype=torch.long), 2, gens(0, 1))
