"""Toy tasks with verifiable rewards, small enough that a tiny policy learns them in seconds.

Every task is a finite table: all prompts (P, prompt_len) and their expected answers (P, answer_len), over a
vocabulary of single-character tokens. Token ids are positions in ``task.vocab``; the end-of-sequence id is
``task.eos_id = len(task.vocab)``. A completion is correct when, after the template prefix, it *starts with*
the expected answer; whatever follows before EOS is free "chatter", so completion length can vary for
every task and the length knob can correlate it with reward (Props 1 and 4 need that). A task with a
``marker`` (``"think"``: ``'='``) reads the answer after the first marker instead, so that "reasoning"
tokens of any number come *before* the answer, as in R1-Zero's ``<think> ... </think> answer``::

    import companion as cp
    task = cp.make_task("pick", length="short")          # short correct answers earn more
    prompts = task.sample_prompts(4, torch.Generator().manual_seed(0))   # (4,) prompt indices
    task.render(task.prompts[prompts[0]])                 # e.g. 'c'

Template prefix (``template="##"``, ``template_mode=...``), three modes that behave differently under
Prop 1 (App. B):

* ``"sampled"``: the policy samples the template itself; a completion earns reward only if it starts with
  the template (a format reward), so completions share the prefix only when they got the format right.
* ``"forced"``: the template is written into every completion (teacher-forced, not sampled) and its tokens
  count in the loss, so the whole group, and every group, shares it.
* ``"shared"``: ``len(template)`` tokens are sampled from the policy once per group and shared by its G
  completions (in the loss); the template's characters are not used, only its length.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

LengthBias = Literal["none", "short", "long"]
TemplateMode = Literal["sampled", "forced", "shared"]
TEMPLATE_TOKEN = "#"
REASONING_TOKEN = "~"
MARKER_TOKEN = "="
LENGTH_BIASES = ("none", "short", "long")
TEMPLATE_MODES = ("sampled", "forced", "shared")


@dataclass(frozen=True, eq=False)
class Task:
    """A finite prompt -> answer table with a verifiable reward and a length knob.

    Reward of a completion o for prompt x: ``reward_scale * correct(o, x) * length_factor(|o|)``, where
    ``|o|`` counts the tokens in the loss (template included, EOS included) and, with
    ``f = (|o| - |o|_min) / (max_new_tokens - |o|_min)`` in [0, 1], the length factor is 1 (``"none"``),
    ``1 - length_strength * f`` (``"short"``) or ``1 - length_strength * (1 - f)`` (``"long"``).

    With a ``marker``, the answer is the ``answer_len`` tokens right after the first marker that follows the
    template; a completion without a marker (one cut at ``max_new_tokens``, say) is wrong.
    """

    name: str
    vocab: tuple[str, ...]
    prompts: Tensor  # (P, prompt_len) long
    answers: Tensor  # (P, answer_len) long
    max_new_tokens: int = 6
    length: LengthBias = "none"
    length_strength: float = 0.5
    template: str = ""
    template_mode: TemplateMode = "forced"
    reward_scale: float = 1.0
    min_new_tokens: int | None = None  # EOS is not allowed before this position; default template + 1
    marker: str = ""  # the answer follows the first marker (reasoning before it); "" = the answer comes first
    _template_ids: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.length not in LENGTH_BIASES:
            raise ValueError(f"length must be one of {LENGTH_BIASES}, got {self.length!r}")
        if self.template_mode not in TEMPLATE_MODES:
            raise ValueError(f"template_mode must be one of {TEMPLATE_MODES}, got {self.template_mode!r}")
        if not 0.0 <= self.length_strength <= 1.0:
            raise ValueError(f"length_strength must lie in [0, 1], got {self.length_strength}")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        unknown = sorted(set(self.template) - set(self.vocab))
        if unknown:
            raise ValueError(f"template uses characters {unknown} outside the task vocab {self.vocab}")
        if self.marker and (len(self.marker) != 1 or self.marker not in self.vocab
                            or self.marker == TEMPLATE_TOKEN):
            raise ValueError(f"marker must be one token of the task vocab {self.vocab} other than the "
                             f"template token {TEMPLATE_TOKEN!r}, or '' (the answer comes first); got "
                             f"{self.marker!r}")
        needed = self.shortest_length
        if needed > self.max_new_tokens:
            raise ValueError(
                f"template of {len(self.template)} tokens + {'marker + ' if self.marker else ''}answer of "
                f"{self.answers.shape[1]} + EOS needs {needed} new tokens, more than max_new_tokens="
                f"{self.max_new_tokens}; shorten the template or raise max_new_tokens")
        if self.min_new_tokens is None:
            object.__setattr__(self, "min_new_tokens", self.prefix_len + 1)
        if not self.prefix_len <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must lie in [len(template)={self.prefix_len}, "
                             f"max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}")
        object.__setattr__(self, "_template_ids", self.encode(self.template))

    # --- vocabulary -------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ordinary tokens; the policy's action space is this plus EOS."""
        return len(self.vocab)

    @property
    def eos_id(self) -> int:
        return len(self.vocab)

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.prompts.shape[1]

    @property
    def prefix_len(self) -> int:
        """Length of the template prefix (0 without a template)."""
        return len(self.template)

    @property
    def shortest_length(self) -> int:
        """Tokens of the shortest correct completion: template, marker (if any), answer, EOS."""
        return self.prefix_len + len(self.marker) + self.answers.shape[1] + 1

    @property
    def template_ids(self) -> Tensor:
        return self._template_ids

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.vocab.index(c) for c in text], dtype=torch.long)

    def render(self, ids: Tensor) -> str:
        """Token ids -> text; EOS shows as '.', and nothing after the first EOS is shown."""
        out = []
        for i in ids.tolist():
            if i == self.eos_id:
                out.append(".")
                break
            out.append(self.vocab[i])
        return "".join(out)

    # --- sampling and reward ----------------------------------------------------------------------------
    def sample_prompts(self, batch: int, generator: torch.Generator) -> Tensor:
        """(batch,) prompt indices drawn uniformly with replacement."""
        return torch.randint(self.num_prompts, (batch,), generator=generator)

    def completion_mask(self, completions: Tensor) -> Tensor:
        """1.0 for the tokens in the loss: every token up to and including the first EOS. Same shape."""
        is_eos = (completions == self.eos_id).long()
        eos_before = torch.cumsum(is_eos, dim=-1) - is_eos
        return (eos_before == 0).to(torch.get_default_dtype())

    def is_correct(self, prompt_idx: Tensor, completions: Tensor) -> Tensor:
        """Bool, shape of ``prompt_idx``: the answer (after the prefix, or after the first marker that follows
        it) starts with the expected answer."""
        k, a = self.prefix_len, self.answers.shape[1]
        expected = self.answers.to(completions.device)[prompt_idx]
        if self.marker:
            ok = self._answer_after_marker_is(expected, completions[..., k:])
        else:
            ok = (completions[..., k:k + a] == expected).all(dim=-1)
        if self.template_mode == "sampled" and k > 0:
            ok = ok & (completions[..., :k] == self.template_ids.to(completions.device)).all(dim=-1)
        return ok

    def _answer_after_marker_is(self, expected: Tensor, body: Tensor) -> Tensor:
        """The ``a`` tokens after the first marker of ``body`` (the completion after the template) equal
        ``expected`` (..., a); False when there is no marker before EOS, or no room after it."""
        a = expected.shape[-1]
        is_marker = (body == self.vocab.index(self.marker)) & (self.completion_mask(body) > 0)
        first = is_marker.long().argmax(-1)  # 0 when there is none: `found` below rules that out
        found = is_marker.any(-1) & (first + a < body.shape[-1])
        positions = first.unsqueeze(-1) + 1 + torch.arange(a, device=body.device)
        positions = positions.clamp(max=body.shape[-1] - 1)
        return found & (body.gather(-1, positions) == expected).all(-1)

    def reward(self, prompt_idx: Tensor, completions: Tensor) -> Tensor:
        """Verifiable reward (float32 or the caller's float dtype via ``.to``), shape of ``prompt_idx``.

        ``completions``: (..., max_new_tokens) token ids, filled with EOS after the first EOS.
        """
        lengths = self.completion_mask(completions).sum(-1)
        correct = self.is_correct(prompt_idx, completions).to(lengths.dtype)
        shortest = self.shortest_length
        span = max(self.max_new_tokens - shortest, 1)
        f = ((lengths - shortest) / span).clamp(0.0, 1.0)
        if self.length == "short":
            factor = 1.0 - self.length_strength * f
        elif self.length == "long":
            factor = 1.0 - self.length_strength * (1.0 - f)
        else:
            factor = torch.ones_like(f)
        return self.reward_scale * correct * factor


# --- the task catalogue -------------------------------------------------------------------------------
def _pick(alphabet: str = "abcd") -> tuple[tuple[str, ...], Tensor, Tensor]:
    """Prompt: one token; answer: that same token. The easiest task."""
    vocab = (*alphabet, TEMPLATE_TOKEN)
    ids = torch.arange(len(alphabet)).unsqueeze(1)
    return vocab, ids, ids.clone()


def _copy(alphabet: str = "ab", n: int = 2) -> tuple[tuple[str, ...], Tensor, Tensor]:
    """Prompt: n tokens; answer: the same n tokens."""
    vocab = (*alphabet, TEMPLATE_TOKEN)
    rows = torch.tensor(list(itertools.product(range(len(alphabet)), repeat=n)), dtype=torch.long)
    return vocab, rows, rows.clone()


def _parity(n: int = 3) -> tuple[tuple[str, ...], Tensor, Tensor]:
    """Prompt: n bits; answer: their parity bit."""
    vocab = ("0", "1", TEMPLATE_TOKEN)
    rows = torch.tensor(list(itertools.product((0, 1), repeat=n)), dtype=torch.long)
    return vocab, rows, rows.sum(1, keepdim=True) % 2


def _add(base: int = 5) -> tuple[tuple[str, ...], Tensor, Tensor]:
    """Prompt: 'a+b'; answer: (a + b) mod base, one digit."""
    if not 2 <= base <= 10:
        raise ValueError(f"base must lie in [2, 10], got {base}")
    vocab = (*(str(d) for d in range(base)), "+", TEMPLATE_TOKEN)
    plus = base
    rows = torch.tensor([(a, plus, b) for a in range(base) for b in range(base)], dtype=torch.long)
    return vocab, rows, ((rows[:, 0] + rows[:, 2]) % base).unsqueeze(1)


def _think(n: int = 5) -> tuple[tuple[str, ...], Tensor, Tensor]:
    """Prompt: 'a+b' with a, b < n; answer: a + b, one digit (n <= 5). The vocab adds a reasoning token '~'
    and the marker '=': a completion reasons (any tokens), then writes '=' and the sum, as in '#4~~=4.' for
    '1+3' (make_task sets the marker)."""
    if not 2 <= n <= 5:
        raise ValueError(f"n must lie in [2, 5] (the sums 0..2n-2 are single digits), got {n}")
    vocab = (*(str(d) for d in range(2 * n - 1)), "+", REASONING_TOKEN, MARKER_TOKEN, TEMPLATE_TOKEN)
    plus = vocab.index("+")
    rows = torch.tensor([(a, plus, b) for a in range(n) for b in range(n)], dtype=torch.long)
    return vocab, rows, (rows[:, 0] + rows[:, 2]).unsqueeze(1)


TASKS: dict[str, Callable[..., tuple[tuple[str, ...], Tensor, Tensor]]] = {
    "pick": _pick, "copy": _copy, "parity": _parity, "add": _add, "think": _think,
}
MARKERS = {"think": MARKER_TOKEN}  # tasks whose answer follows a marker, after the reasoning
REASONING_ROOM = 4  # the default budget of "think" leaves room for this many reasoning tokens


def make_task(name: str, *, max_new_tokens: int | None = None, length: LengthBias = "none",
              length_strength: float = 0.5, template: str = "", template_mode: TemplateMode = "forced",
              reward_scale: float = 1.0, min_new_tokens: int | None = None, **options: int | str) -> Task:
    """Build a task by name: one of ``TASKS`` ("pick", "copy", "parity", "add", "think").

    ``options`` go to the task's table builder (``alphabet`` for pick/copy, ``n`` for copy/parity/think,
    ``base`` for add). ``max_new_tokens`` defaults to template + answer + 3 (room for chatter and EOS), and
    for "think" to template + ``REASONING_ROOM`` reasoning tokens + '=' + answer + EOS; ``min_new_tokens``
    (no EOS before it) defaults to template + 1, so every answer has at least one token.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    vocab, prompts, answers = TASKS[name](**options)
    marker = MARKERS.get(name, "")
    if max_new_tokens is None:
        room = REASONING_ROOM + len(marker) + 1 if marker else 3
        max_new_tokens = len(template) + answers.shape[1] + room
    return Task(name=name, vocab=vocab, prompts=prompts, answers=answers, max_new_tokens=max_new_tokens,
                length=length, length_strength=length_strength, template=template,
                template_mode=template_mode, reward_scale=reward_scale, min_new_tokens=min_new_tokens,
                marker=marker)
