"""Optimizer benchmark: InstrumentedAdamW vs torch.optim.AdamW step time.

Model: a GPT-shaped stack of about 10M fp32 parameters (token embedding 8192 x 512, two transformer blocks,
layer norms and biases: 28 tensors), gradients filled once with N(0, 1) (the step's cost does not depend on
the values). One CPU thread. For each `foreach` setting, torch's AdamW and InstrumentedAdamW with
diagnostics off / cheap / full each own a copy of the model and take one step in turn, round after round
(interleaved, so that load on the shared machine hits all variants alike); the medians are reported, and
each variant's median divided by torch's with the same `foreach`.

Targets: full <= 1.3x, off <= 1.05x. Then, as information (no target), the same levels on a tiny GPT-shaped
stack (vocabulary 64, width 32, two blocks: 28 tensors of at most 2048 elements, like chapter 8's model)
against torch's default step: there the cost is per tensor, not per element.
"""

import torch
from results import Row
from timing import interleaved

from companion.optim import InstrumentedAdamW

ROUNDS = 40
WARMUP = 3
VARIANTS = ("torch", "off", "cheap", "full")


def gpt_shaped_shapes(vocab: int = 8192, width: int = 512, blocks: int = 2) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(vocab, width), (256, width)]  # token and position embeddings
    for _ in range(blocks):
        shapes += [(width,), (width,), (3 * width, width), (3 * width,), (width, width), (width,),
                   (width,), (width,), (4 * width, width), (4 * width,), (width, 4 * width), (width,)]
    return [*shapes, (width,), (width,)]  # final layer norm


TINY_SHAPES = gpt_shaped_shapes(64, 32, 2)


def make_optimizer(variant: str, foreach: bool | None, seed: int = 0, quick: bool = False,
                   shapes: list[tuple[int, ...]] | None = None) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(seed)
    if shapes is None:
        shapes = gpt_shaped_shapes(1024, 128, 1) if quick else gpt_shaped_shapes()
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    kwargs = dict(lr=1e-4, weight_decay=0.01, foreach=foreach)
    if variant == "torch":
        return torch.optim.AdamW(params, **kwargs)
    return InstrumentedAdamW(params, diagnostics=variant, **kwargs)


def run(quick: bool = False) -> list[Row]:
    torch.set_num_threads(1)
    rows = []
    for foreach in (False, True):
        optimizers = {v: make_optimizer(v, foreach, quick=quick) for v in VARIANTS}
        times = interleaved({v: opt.step for v, opt in optimizers.items()}, rounds=5 if quick else ROUNDS,
                            warmup=WARMUP)
        for variant, target in (("full", 1.3), ("cheap", 1.3), ("off", 1.05)):
            rows.append(Row(f"optimizer_{variant}_foreach_{foreach}",
                            f"`InstrumentedAdamW` diagnostics={variant!r} vs torch AdamW, foreach={foreach}",
                            times[variant], times["torch"], target))
    optimizers = {v: make_optimizer(v, None, shapes=TINY_SHAPES) for v in VARIANTS}
    times = interleaved({v: opt.step for v, opt in optimizers.items()}, rounds=10 if quick else 300,
                        warmup=WARMUP)
    for variant in ("full", "cheap", "off"):
        rows.append(Row(f"optimizer_{variant}_tiny", f"`InstrumentedAdamW` diagnostics={variant!r} vs torch "
                        f"AdamW's default step, a tiny model ({len(TINY_SHAPES)} tensors)",
                        times[variant], times["torch"], None))
    return rows
