"""Tasks: tables, verifiable rewards, the length knob, template modes, bad input."""

import pytest
import torch

from companion.tasks import TASKS, make_task


def ids(task, text: str, pad_to: int | None = None) -> torch.Tensor:
    """'ab.' -> token ids, '.' = EOS, EOS-filled to ``pad_to`` (default: the task's budget)."""
    out = [task.eos_id if c == "." else task.vocab.index(c) for c in text]
    return torch.tensor(out + [task.eos_id] * ((pad_to or task.max_new_tokens) - len(out)))


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown task 'sort'.*add.*copy.*parity.*pick"):
        make_task("sort")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_one_answer_per_prompt_and_a_vocab_with_the_template_token(name):
    task = make_task(name)
    assert task.answers.shape[0] == task.prompts.shape[0] == task.num_prompts
    assert "#" in task.vocab and task.eos_id == len(task.vocab)
    assert int(task.prompts.max()) < task.eos_id and int(task.answers.max()) < task.eos_id


def test_tables_parity_and_add_by_hand():
    parity = make_task("parity", n=3)
    rows = {parity.render(p): parity.render(a) for p, a in zip(parity.prompts, parity.answers, strict=True)}
    assert rows["000"] == "0" and rows["101"] == "0" and rows["111"] == "1" and rows["100"] == "1"
    add = make_task("add", base=5)
    rows = {add.render(p): add.render(a) for p, a in zip(add.prompts, add.answers, strict=True)}
    assert len(rows) == 25 and rows["3+4"] == "2" and rows["0+0"] == "0" and rows["2+2"] == "4"


def test_completion_mask_counts_tokens_up_to_and_including_the_first_eos():
    task = make_task("pick", max_new_tokens=5)
    comps = torch.stack([ids(task, "a."), ids(task, "abcd"), ids(task, "."), ids(task, "ab.")])
    mask = task.completion_mask(comps)
    assert mask.sum(-1).tolist() == [2.0, 5.0, 1.0, 3.0]
    assert mask[0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_reward_checks_that_the_answer_starts_the_completion():
    task = make_task("copy", alphabet="ab", n=2)
    prompt = task.prompts.tolist().index(task.encode("ab").tolist())
    comps = torch.stack([ids(task, "ab."), ids(task, "aba."), ids(task, "ba."), ids(task, "a.")])
    reward = task.reward(torch.full((4,), prompt), comps)
    assert reward.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_length_knob_short_long_none_by_hand():
    # pick: shortest correct completion is 'a.' (2 tokens); budget 6 -> f = (|o| - 2) / 4
    comps = torch.stack([ids(make_task("pick", max_new_tokens=6), t) for t in ("a.", "aa.", "aaaaa.", "b.")])
    prompts = torch.zeros(4, dtype=torch.long)
    none = make_task("pick", max_new_tokens=6).reward(prompts, comps)
    short = make_task("pick", max_new_tokens=6, length="short", length_strength=0.5).reward(prompts, comps)
    long = make_task("pick", max_new_tokens=6, length="long", length_strength=1.0).reward(prompts, comps)
    assert none.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert torch.allclose(short, torch.tensor([1.0, 1 - 0.5 * 0.25, 1 - 0.5 * 1.0, 0.0]))
    assert torch.allclose(long, torch.tensor([0.0, 0.25, 1.0, 0.0]))


def test_reward_scale_multiplies_the_reward():
    task = make_task("pick", reward_scale=10.0, length="short")
    comps = torch.stack([ids(task, "a."), ids(task, "aa.")])
    base = make_task("pick", length="short").reward(torch.zeros(2, dtype=torch.long), comps)
    assert torch.allclose(task.reward(torch.zeros(2, dtype=torch.long), comps), 10 * base)


def test_template_sampled_mode_requires_the_format_forced_mode_does_not():
    sampled = make_task("pick", template="##", template_mode="sampled")
    forced = make_task("pick", template="##", template_mode="forced")
    comps = torch.stack([ids(sampled, "##a."), ids(sampled, "#ba.")])
    prompts = torch.zeros(2, dtype=torch.long)
    assert sampled.reward(prompts, comps).tolist() == [1.0, 0.0]
    # forced/shared read the answer after k tokens, whatever those are
    forced_comps = torch.stack([ids(forced, "#ba."), ids(forced, "##b.")])
    assert forced.reward(prompts, forced_comps).tolist() == [1.0, 0.0]
    assert forced.min_new_tokens == 3 and make_task("pick").min_new_tokens == 1


def test_template_longer_than_the_completion_budget_is_an_error_naming_it():
    with pytest.raises(ValueError, match="template"):
        make_task("pick", template="#####", max_new_tokens=5)
    with pytest.raises(ValueError, match="template"):
        make_task("pick", template="xy")


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"length": "medium"}, "length"), ({"template_mode": "once"}, "template_mode"),
    ({"length_strength": 2.0}, "length_strength"), ({"reward_scale": 0.0}, "reward_scale"),
    ({"base": 11}, "base"), ({"min_new_tokens": 9}, "min_new_tokens"),
    ({"template": "##", "min_new_tokens": 1}, "min_new_tokens"),
])
def test_bad_options_name_the_argument(kwargs, word):
    name = "add" if "base" in kwargs else "pick"
    with pytest.raises(ValueError, match=word):
        make_task(name, **kwargs)


def test_sample_prompts_is_seeded_and_in_range():
    task = make_task("parity", n=3)
    a = task.sample_prompts(50, torch.Generator().manual_seed(3))
    b = task.sample_prompts(50, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and int(a.min()) >= 0 and int(a.max()) < 8 and len(set(a.tolist())) > 4
