"""Optimizer benchmark: InstrumentedAdamW vs torch.optim.AdamW step time. Prints `name value unit`.

Model: a GPT-shaped stack of about 10M fp32 parameters (token embedding 8192 x 512, two transformer blocks,
layer norms and biases: 28 tensors), gradients filled once with N(0, 1) (the step's cost does not depend on
the values). One CPU thread. For each `foreach` setting, torch's AdamW and InstrumentedAdamW with
diagnostics off / cheap / full each own a copy of the model and take one step in turn, round after round
(interleaved, so that load on the shared machine hits all variants alike); the medians are reported, and
each variant's median divided by torch's with the same `foreach`.

Targets: full <= 1.3x, off <= 1.05x.
"""

import statistics
import time

import torch

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


def make_optimizer(variant: str, foreach: bool, seed: int = 0) -> torch.optim.Optimizer:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in gpt_shaped_shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    kwargs = dict(lr=1e-4, weight_decay=0.01, foreach=foreach)
    if variant == "torch":
        return torch.optim.AdamW(params, **kwargs)
    return InstrumentedAdamW(params, diagnostics=variant, **kwargs)


def interleaved_medians(foreach: bool) -> dict[str, float]:
    optimizers = {v: make_optimizer(v, foreach) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_index in range(WARMUP + ROUNDS):
        for variant, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            elapsed = time.perf_counter() - start
            if round_index >= WARMUP:
                times[variant].append(elapsed)
    return {v: statistics.median(t) for v, t in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    n_params = sum(torch.Size(s).numel() for s in gpt_shaped_shapes())
    print(f"optimizer_model_parameters {n_params} params")
    for foreach in (False, True):
        medians = interleaved_medians(foreach)
        tag = f"foreach={foreach}"
        for variant in VARIANTS:
            name = "torch_adamw" if variant == "torch" else f"instrumented_{variant}"
            print(f"optimizer_step_{name}_{tag} {medians[variant] * 1e3:.2f} ms")
        for variant in VARIANTS[1:]:
            print(f"optimizer_ratio_{variant}_vs_torch_{tag} {medians[variant] / medians['torch']:.3f} x")


if __name__ == "__main__":
    main()
