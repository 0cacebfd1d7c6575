"""A real TRL 1.16 GRPO run that fits in a second on a CPU, offline: the fixture of the TRL bridge tests.

A one-layer GPT2LMHeadModel built from GPT2Config (no dropout), a word-level tokenizer built with
`tokenizers`, an in-memory dataset whose prompts are letters, and a verifiable reward: 1 when the
completion is "= x ..." with x the prompt's letter. A few teacher-forced steps first teach the model the
format (a shared "=" prefix) with a uniformly random letter and a random length, as pretraining would, so
that the groups share a prefix and their lengths vary. Nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

LETTERS = ("a", "b", "c", "d")
VOCAB = ("<pad>", "<eos>", "<unk>", *LETTERS, "=")


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def model(seed: int = 0, dtype: torch.dtype = torch.float32, warm_start_steps: int = 40):
    """The policy: a fresh one-layer GPT-2, taught the "= letter ..." format by ``warm_start_steps``
    teacher-forced AdamW steps on random well-formed completions."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(VOCAB), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=1, eos_token_id=1, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(seed)
    policy = GPT2LMHeadModel(config)
    if warm_start_steps:
        _warm_start(policy, warm_start_steps, seed)
    return policy.to(dtype)


def _warm_start(policy, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ids = {w: i for i, w in enumerate(VOCAB)}
    letters = torch.tensor([ids[c] for c in LETTERS])
    rows, width = 64, 7
    prompt = letters[torch.randint(4, (rows,), generator=generator)]
    body = letters[torch.randint(4, (rows, width - 2), generator=generator)]
    length = torch.randint(1, width - 2, (rows,), generator=generator)  # letters after "="
    text = torch.full((rows, width + 1), ids["<pad>"])
    text[:, 0], text[:, 1] = prompt, ids["="]
    for i in range(rows):
        text[i, 2:2 + length[i]] = body[i, :length[i]]
        text[i, 2 + length[i]] = ids["<eos>"]
    labels = text.masked_fill(text == ids["<pad>"], -100)
    labels[:, 0] = -100  # the prompt is given
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    policy.train()
    for _ in range(steps):
        optimizer.zero_grad()
        logits = policy(input_ids=text, attention_mask=(text != ids["<pad>"]).long()).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()).backward()
        optimizer.step()


def dataset(repeats: int = 4):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": list(LETTERS) * repeats, "answer": list(LETTERS) * repeats})


def format_reward(completions, answer, **kwargs):
    """1 when the completion reads "= x ..." with x the prompt's letter, else 0 (a verifiable reward)."""
    return [1.0 if c.split()[:2] == ["=", a] else 0.0 for c, a in zip(completions, answer, strict=True)]


def config(output_dir: str, **overrides):
    from trl import GRPOConfig

    fields = dict(output_dir=output_dir, per_device_train_batch_size=8, num_generations=4,
                  max_completion_length=6, num_iterations=2, max_steps=5, learning_rate=1e-2,
                  report_to="none", use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True,
                  seed=0, activation_checkpointing=False)
    fields.update(overrides)
    return GRPOConfig(**fields)
