"""companion.sft: demonstrations of the think task, supervised training, the sampled evaluation."""

import numpy as np
import pytest
import torch

from companion import sft
from companion.gpt2 import StackedGPT2Policy
from companion.tasks import make_task


def think(**options):
    return make_task("think", template="#", template_mode="sampled", **options)


@pytest.mark.parametrize("style", sft.STYLES)
def test_demonstrations_are_right_answers_in_the_format(style):
    task = think()
    prompts = torch.arange(task.num_prompts).repeat(8)
    demos = sft.Demos(style=style, reasoning=(1, 4)).sample(task, prompts, torch.Generator().manual_seed(0))
    assert demos.shape == (len(prompts), task.max_new_tokens)
    assert task.reward(prompts, demos).eq(1.0).all()
    texts = [task.render(d) for d in demos]
    for prompt, text in zip(prompts.tolist(), texts, strict=True):
        answer = task.render(task.answers[prompt])
        head, tail = text.split("=")
        assert text.startswith("#") and tail == answer + "."
        thinking = head[1:]
        assert 1 <= len(thinking) <= 4
        if style == "draft":
            assert thinking == answer + "~" * (len(thinking) - 1)
        else:
            assert thinking == "~" * len(thinking)
    lengths = {len(t) for t in texts}
    assert lengths == {5, 6, 7, 8}  # every reasoning length of (1, 4) occurs


def test_demonstrations_are_seeded_and_keep_the_prompt_shape():
    task = think()
    prompts = torch.tensor([[0, 1, 2], [3, 4, 5]])
    a = sft.Demos().sample(task, prompts, torch.Generator().manual_seed(3))
    b = sft.Demos().sample(task, prompts, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 3, task.max_new_tokens)


@pytest.mark.parametrize(("demos", "word"), [
    (sft.Demos(style="essay"), "style"), (sft.Demos(reasoning=(0, 2)), "reasoning"),
    (sft.Demos(reasoning=(2, 9)), "reasoning"),
    (sft.Demos(style="answer_last", reasoning=(3, 2)), "reasoning"),
])
def test_bad_demonstrations_are_named(demos, word):
    with pytest.raises(ValueError, match=word):
        demos.sample(think(), torch.arange(3), torch.Generator())


def test_demonstrations_need_a_task_with_a_marker():
    with pytest.raises(ValueError, match="marker"):
        sft.Demos().sample(make_task("add"), torch.arange(3), torch.Generator())


def test_training_lowers_the_loss_and_lifts_accuracy_above_chance():
    task = think()
    policy = StackedGPT2Policy.for_task(task, num_seeds=2)
    before = sft.evaluate(policy, task)
    record = sft.train(policy, task, steps=150, progress=False)
    after = sft.evaluate(policy, task)
    assert record.loss.shape == (150, 2)
    assert (record.loss[-10:].mean(0) < 0.6 * record.loss[:5].mean(0)).all()
    assert (before.format < 0.2).all() and (after.format > 0.9).all()
    assert (after.accuracy > 0.3).all() and (before.accuracy < 0.1).all()  # chance: about 1/9 per answer


def test_training_is_deterministic_and_per_seed():
    task = think()
    a = StackedGPT2Policy.for_task(task, num_seeds=2)
    b = StackedGPT2Policy.for_task(task, num_seeds=2)
    ra = sft.train(a, task, steps=3, seed=4, progress=False)
    rb = sft.train(b, task, steps=3, seed=4, progress=False)
    assert np.array_equal(ra.loss, rb.loss)
    one = StackedGPT2Policy.for_task(task, num_seeds=1, seed=1)
    r1 = sft.train(one, task, steps=3, seed=5, progress=False)  # seed index 1 of a run with seed=4
    assert np.allclose(ra.loss[:, 1], r1.loss[:, 0], atol=1e-5)


def test_evaluation_scores_the_samples_it_draws():
    task = think()
    policy = StackedGPT2Policy.for_task(task, num_seeds=2)
    sft.train(policy, task, steps=40, progress=False)
    ev = sft.evaluate(policy, task, samples_per_prompt=4, seed=9)
    g = [torch.Generator().manual_seed(9 + s) for s in range(2)]
    prompts = torch.arange(task.num_prompts).expand(2, -1)
    completions = policy.sample(task, prompts, 4, g)
    correct = task.is_correct(prompts.repeat_interleave(4, 1), completions).float().mean(1)
    assert np.allclose(ev.accuracy, correct.numpy())
    assert np.allclose(ev.length, task.completion_mask(completions).sum(-1).mean(1).numpy())
    assert (ev.format >= ev.accuracy).all()


@pytest.mark.parametrize(("kwargs", "word"), [({"steps": 0}, "steps"), ({"batch_size": 1.5}, "batch_size")])
def test_bad_training_arguments_are_named(kwargs, word):
    task = think()
    with pytest.raises(ValueError, match=word):
        sft.train(StackedGPT2Policy.for_task(task), task, **kwargs)


def test_an_optimizer_passed_in_keeps_its_moments_across_calls():
    task = think()
    once = StackedGPT2Policy.for_task(task, num_seeds=1)
    twice = StackedGPT2Policy.for_task(task, num_seeds=1)
    sft.train(once, task, steps=4, seed=0, progress=False)
    optimizer = torch.optim.AdamW(twice.parameters(), lr=1e-2, weight_decay=0.0)
    first = sft.train(twice, task, steps=2, seed=0, optimizer=optimizer, progress=False)
    assert optimizer.state[next(iter(twice.parameters()))]["step"].item() == 2
    sft.train(twice, task, steps=2, seed=0, optimizer=optimizer, progress=False)
    assert optimizer.state[next(iter(twice.parameters()))]["step"].item() == 4
    assert first.loss.shape == (2, 1)
