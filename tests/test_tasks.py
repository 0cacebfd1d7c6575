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


def test_think_table_vocab_and_budget():
    task = make_task("think")
    rows = {task.render(p): task.render(a) for p, a in zip(task.prompts, task.answers, strict=True)}
    assert len(rows) == 25 and rows["1+3"] == "4" and rows["4+4"] == "8" and rows["0+0"] == "0"
    assert {"~", "=", "#"} <= set(task.vocab) and task.marker == "="
    assert task.max_new_tokens == 7 and make_task("think", template="#").max_new_tokens == 8
    assert make_task("think", n=2).num_prompts == 4
    with pytest.raises(ValueError, match="n must lie"):
        make_task("think", n=6)


def test_think_reads_the_answer_after_the_first_marker():
    task = make_task("think", template="#", template_mode="sampled")
    prompt = torch.full((8,), task.prompts.tolist().index(task.encode("1+3").tolist()))
    comps = torch.stack([ids(task, t) for t in (
        "#~~=4.",     # reasoning, then the right answer
        "#4=4.",      # a draft as reasoning
        "#=4.",       # no reasoning at all
        "#~=5.",      # wrong answer
        "#~=4=5.",    # the first marker counts
        "#4~~~~~=",   # cut after the marker: no answer
        "#~~~~~~~",   # no marker: cut while reasoning
        "~=4.",       # no format token
    )])
    assert task.is_correct(prompt, comps).tolist() == [True, True, True, False, True, False, False, False]
    assert task.reward(prompt, comps).tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert task.shortest_length == 4  # '#', '=', the answer, EOS


def test_a_marker_must_be_a_task_token_other_than_the_template():
    from companion.tasks import Task

    table = make_task("think")
    for marker in ("x", "#", "=="):
        with pytest.raises(ValueError, match="marker"):
            Task(name="t", vocab=table.vocab, prompts=table.prompts, answers=table.answers, max_new_tokens=6,
                 marker=marker)
    with pytest.raises(ValueError, match="marker"):
        make_task("think", max_new_tokens=2)  # '=', the answer and EOS need 3


def test_tasks_without_a_marker_still_read_the_answer_first():
    task = make_task("add", base=5)
    assert task.marker == "" and task.shortest_length == 2
    prompt = torch.full((2,), task.prompts.tolist().index(task.encode("3+4").tolist()))
    assert task.is_correct(prompt, torch.stack([ids(task, "2."), ids(task, "+2.")])).tolist() == [True, False]
