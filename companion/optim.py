"""`InstrumentedAdamW`: torch's AdamW step, bit for bit, plus per-step diagnostics (Eq. 4-6, App. C-D).

Parameters and `state_dict` are bit-identical to `torch.optim.AdamW` (fp32/fp64, weight decay, amsgrad,
maximize, foreach on or off; tested over 100 steps). Two ways to get there:

- any group that is not plain (tensor lr or betas, capturable, differentiable, fused, complex or
  half-precision or non-contiguous tensors): torch's own `step` runs, and the statistics are read from the
  optimizer state afterwards.
- otherwise, parameters of at least `CHUNKED_STEP_SIZE` elements take a chunked loop: torch's single-tensor
  operations in torch's order on slices of `CHUNK` elements (the same numbers, whatever `foreach` says),
  the statistics read off the intermediates while they are in cache. Smaller parameters take torch's own
  loop, a batch at a time (consecutive parameters with the same t, at most `CHUNK` elements in all), and
  the batch's statistics are read from the state in one pass: per-tensor overhead, not arithmetic, is what
  small tensors cost. benchmarks/bench_optimizer.py measures both against torch's step. With diagnostics
  ``"off"`` the step is often faster than torch's: no temporaries the size of a parameter, and no slow path
  of the CPU's sqrt for the exact zeros of v (`_sqrt`).

All quantities use the bias corrections torch used at that step (t = the parameter's `state["step"]`):

    m̂ = m / (1 − β1^t),   √v̂ = √v / √(1 − β2^t)   (v = max_exp_avg_sq with amsgrad),
    u = m̂ / (√v̂ + ε)      the preconditioned step,
    Δθ = θ_t − θ_{t−1} = −lr·λ·θ_{t−1} − lr·u   (λ = weight_decay).

Levels (`diagnostics=`), history keys in brackets:

- ``"off"``: nothing is computed or recorded.
- ``"cheap"`` (default): ‖g‖ [grad_norm], ‖m̂‖ [m_hat_norm], ‖u‖ [precond_norm], C_T = ‖u_t‖/‖u_{t−1}‖
  (Eq. 31) [c_t], min/mean/max of √v̂ [sqrt_v_hat_min/mean/max], the fraction of coordinates with ε ≥ √v̂
  (Prop 2's condition) [eps_dominated_frac], 1.0 if ‖g‖² is not finite [nonfinite_grad] (a NaN/inf
  gradient, or a finite one whose square overflows the parameter's dtype).
- ``"full"``: also ‖Δθ‖ as measured on the parameters [update_norm], cos(Δθ, −g) [cos_update_neg_grad]
  (g is the gradient torch descends along, i.e. −grad with maximize), and the fraction of coordinates whose
  gradient is exactly 0 but whose m is not, so that Adam still moves them (Prop 3) [momentum_only_frac].
  The step of a plain group keeps θ_{t−1} of one batch of small parameters at a time (at most `CHUNK`
  elements), never of a whole parameter; torch's own step keeps a parameter-sized copy.

Every row also has [step] (calls to `step`), [batch] (calls to `new_batch`), and per group [lr/group{i}]
and [t/group{i}] (the bias-correction step of the group's first parameter). Quantities are recorded per
parameter group (suffix ``/group{i}``) and in total (no suffix); a level's missing quantities are NaN, and
so is C_T at the first step, after `reset_moments` and after `load_state_dict`. Non-finite gradients are
not filtered: they show up as NaN/inf in the columns. `opt.history` holds Python floats only, so its size
grows with the number of steps, never with the model.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam  # torch's functional AdamW: what its `step` calls

DiagnosticsLevel = Literal["off", "cheap", "full"]
LEVELS: tuple[str, ...] = ("off", "cheap", "full")

# Diagnostics walk each parameter in chunks this long: long enough that the per-operation dispatch cost is
# small next to the work (2^16 made "full" 1.45x torch's step on the benchmark, 2^18 1.24x), short enough
# that the three scratch vectors stay far below a large model's size.
CHUNK = 1 << 18

# Below this many elements the slow path of sqrt costs less than looking for zeros (`_sqrt`).
SAFE_SQRT_SIZE = 1 << 14
# Parameters of at least this many elements take the chunked step (its temporaries stay in cache); smaller
# ones take torch's own loop, which spends less Python per tensor (with diagnostics: a batch at a time).
CHUNKED_STEP_SIZE = 1 << 16

CHEAP_KEYS: tuple[str, ...] = (
    "grad_norm", "m_hat_norm", "precond_norm", "c_t", "sqrt_v_hat_min", "sqrt_v_hat_mean",
    "sqrt_v_hat_max", "eps_dominated_frac", "nonfinite_grad",
)
FULL_KEYS: tuple[str, ...] = ("update_norm", "cos_update_neg_grad", "momentum_only_frac")

# Columns of the per-chunk statistics vector, and how each one is reduced across chunks and tensors.
# Per chunk: ‖g‖², ‖m‖², Σ√v̂, min √v̂, max √v̂, Σs², Σs with s = sign(√v̂ − ε), ‖m/(√v̂+ε)‖², then (full only)
# ‖Δθ‖², ⟨Δθ, −g⟩, #(g = 0 and m ≠ 0); the element count is appended per parameter.
_STATS = ("gg", "mm", "v_sum", "v_min", "v_max", "s_sq", "s_sum", "uu", "dd", "dg", "m_only", "numel")
_MIN, _MAX = _STATS.index("v_min"), _STATS.index("v_max")


class History:
    """Columnar per-step record: ``history[key]`` is a float64 numpy array with one entry per recorded step.

    Quantities a level does not compute are NaN, so every column has the same length and plots directly:
    ``plt.plot(h["step"], h["c_t"])``.
    """

    def __init__(self) -> None:
        self._columns: dict[str, list[float]] = {}
        self._rows = 0

    def append(self, row: dict[str, float]) -> None:
        """Add one step; columns absent from `row` get NaN, new columns are NaN-padded backwards."""
        for key in row.keys() - self._columns.keys():
            self._columns[key] = [math.nan] * self._rows
        for key, column in self._columns.items():
            column.append(float(row.get(key, math.nan)))
        self._rows += 1

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._columns:
            raise KeyError(f"no history column {key!r}; available: {sorted(self._columns)}")
        return np.asarray(self._columns[key], dtype=np.float64)

    def __contains__(self, key: object) -> bool:
        return key in self._columns

    def __len__(self) -> int:
        return self._rows

    def keys(self) -> list[str]:
        return list(self._columns)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {key: self[key] for key in self._columns}

    def clear(self) -> None:
        self._columns.clear()
        self._rows = 0

    def __repr__(self) -> str:
        return f"History({self._rows} steps, {len(self._columns)} columns)"


def bias_corrections(beta1: float, beta2: float, step: float) -> tuple[float, float]:
    """(1 − β1^t, √(1 − β2^t)), computed exactly as torch's AdamW computes them (non-capturable path)."""
    return 1 - beta1**step, (1 - beta2**step) ** 0.5


def second_moment(state: dict[str, Any], amsgrad: bool) -> Tensor:
    """The v that AdamW divides by: `max_exp_avg_sq` with amsgrad, else `exp_avg_sq`."""
    return state["max_exp_avg_sq"] if amsgrad else state["exp_avg_sq"]


def _flat(t: Tensor) -> Tensor:
    """A 1-D real view (or copy) of `t`; half precision is widened to fp32 for the statistics."""
    t = torch.view_as_real(t) if t.is_complex() else t
    t = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    return t.reshape(-1)


def _moment_stats(g: Tensor, m: Tensor, sqrt_v_hat: Tensor, eps: float,
                  out: Tensor | None = None) -> list[Tensor]:
    """‖g‖², ‖m‖², Σ√v̂, min √v̂, max √v̂, Σs², Σs of one chunk, s = sign(√v̂ − ε) (before ε is added).

    #(ε ≥ √v̂) = n − (Σs² + Σs)/2. sign() is used because bool-producing comparisons are several times
    slower on CPU. When min √v̂ > ε (a chunk of a dense model), s = 1 everywhere: Σs² = Σs = n, no pass.
    """
    v_min, v_max = torch.aminmax(sqrt_v_hat)
    parts = [torch.dot(g, g), torch.dot(m, m), sqrt_v_hat.sum(), v_min, v_max]
    if v_min.item() > eps:
        n = v_min.new_tensor(float(sqrt_v_hat.numel()))
        return [*parts, n, n]
    s = torch.sub(sqrt_v_hat, eps, out=out).sign_()
    return [*parts, torch.dot(s, s), s.sum()]


def _motion_stats(minus_delta: Tensor, g: Tensor, m: Tensor, out: Tensor | None = None) -> list[Tensor]:
    """‖Δθ‖², ⟨Δθ, −g⟩ and the momentum-only count #(g = 0, m ≠ 0) of one chunk, from −Δθ = θ_{t−1} − θ_t.

    The count is 0 when min |g| > 0 (one pass); otherwise, with s_x = sign(x), it is
    #(m ≠ 0) − #(g ≠ 0, m ≠ 0) = ⟨s_m, s_m⟩ − ‖s_g ⊙ s_m‖². `minus_delta` is overwritten once used.
    """
    motion = [torch.dot(minus_delta, minus_delta), torch.dot(minus_delta, g)]
    if torch.abs(g, out=out).amin().item() > 0:
        return [*motion, motion[0].new_zeros(())]
    s_g = torch.sign(g, out=out)
    s_m = torch.sign(m, out=minus_delta)
    m_count = torch.dot(s_m, s_m)
    both = s_m.mul_(s_g)
    return [*motion, m_count - torch.dot(both, both)]


def _chunk_stats_from_state(g: Tensor, m: Tensor, v: Tensor, bc2_sqrt: float, eps: float,
                            theta: Tensor | None, before: Tensor | None) -> Tensor:
    """Statistics of one chunk, read from the state after torch's step (m raw, scaled by 1/bc1 later)."""
    sqrt_v_hat = v.sqrt().div_(bc2_sqrt)
    parts = _moment_stats(g, m, sqrt_v_hat, eps)
    u_raw = torch.div(m, sqrt_v_hat.add_(eps), out=sqrt_v_hat)  # m / (√v̂ + ε), in place
    parts.append(torch.dot(u_raw, u_raw))
    if theta is not None and before is not None:
        parts += _motion_stats(before.sub_(theta), g, m)
    return torch.stack(parts)


def _chunks(n: int) -> Iterable[tuple[int, int]]:
    return ((start, min(CHUNK, n - start)) for start in range(0, n, CHUNK))


def _reduce_rows(rows: Tensor) -> Tensor:
    out = rows.sum(0)
    out[_MIN] = rows[:, _MIN].min()
    out[_MAX] = rows[:, _MAX].max()
    return out


def _finish(stats: Tensor | None) -> dict[str, float]:
    """Turn reduced statistics into the recorded quantities (empty where nothing had a gradient)."""
    if stats is None:
        return {}
    s = dict(zip(_STATS, stats.tolist(), strict=True))
    grad_norm = math.sqrt(s["gg"])
    update_norm = math.sqrt(s["dd"])
    denom = update_norm * grad_norm
    return {
        "grad_norm": grad_norm,
        "m_hat_norm": math.sqrt(s["mm"]),
        "precond_norm": math.sqrt(s["uu"]),
        "sqrt_v_hat_min": s["v_min"],
        "sqrt_v_hat_mean": s["v_sum"] / s["numel"],
        "sqrt_v_hat_max": s["v_max"],
        "eps_dominated_frac": (s["numel"] - (s["s_sq"] + s["s_sum"]) / 2) / s["numel"],
        "nonfinite_grad": float(not math.isfinite(s["gg"])),
        "update_norm": update_norm,
        "cos_update_neg_grad": s["dg"] / denom if denom > 0 else math.nan,
        "momentum_only_frac": s["m_only"] / s["numel"],
    }


@dataclass(frozen=True)
class _Hyper:
    lr: float
    beta1: float
    beta2: float
    weight_decay: float
    eps: float
    bc2_sqrt: float
    step_size: float
    maximize: bool


def _adamw_chunk(theta: Tensor, grad: Tensor, m: Tensor, v: Tensor, v_max: Tensor | None,
                 work: tuple[Tensor, ...], h: _Hyper, level: str) -> list[Tensor]:
    """One chunk of torch's AdamW update (the same operations in the same order) and its statistics (none
    at level "off")."""
    size = theta.numel()
    scratch, signs, before = work if size == work[0].numel() else (w[:size] for w in work)
    g = torch.neg(grad) if h.maximize else grad
    full = level == "full"
    if full:
        before.copy_(theta)
    if h.weight_decay != 0:
        theta.mul_(1 - h.lr * h.weight_decay)
    m.lerp_(g, 1 - h.beta1)
    v.mul_(h.beta2).addcmul_(g, g, value=1 - h.beta2)
    if v_max is not None:
        v = torch.maximum(v_max, v, out=v_max)
    sqrt_v_hat = _sqrt(v, scratch, signs).div_(h.bc2_sqrt)  # signs: free until the statistics
    parts = [] if level == "off" else _moment_stats(g, m, sqrt_v_hat, h.eps, signs)
    denom = sqrt_v_hat.add_(h.eps)
    theta.addcdiv_(m, denom, value=-h.step_size)
    if level == "off":
        return parts
    u_raw = torch.div(m, denom, out=scratch)
    parts.append(torch.dot(u_raw, u_raw))
    if full:
        parts += _motion_stats(before.sub_(theta), g, m, signs)
    return parts


def _sqrt(v: Tensor, out: Tensor, work: Tensor) -> Tensor:
    """``torch.sqrt(v, out=out)``, bit for bit, avoiding the CPU kernel's slow path for exact zeros (about 3x
    slower on a vector that holds one: a tabular policy's never-reached logits keep v = 0). Zeros go through
    sqrt as ones and come back as 1 - 1 = 0; ``work`` (same size) holds the 0/1 indicator."""
    if v.numel() < SAFE_SQRT_SIZE or v.device.type != "cpu" or not bool(v.amin() == 0):  # v >= 0
        return torch.sqrt(v, out=out)
    zero = torch.eq(v, 0, out=work)  # 1.0 where v == 0 (a float result: bool ones are slower)
    return torch.add(v, zero, out=out).sqrt_().sub_(zero)


class InstrumentedAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` with per-step diagnostics; a drop-in replacement (paper Eq. 4-6, App. C-D).

    Same arguments as `torch.optim.AdamW`, plus (keyword only):
        diagnostics: ``"off"``, ``"cheap"`` (default) or ``"full"`` (see the module docstring); settable
            later through ``opt.diagnostics``.
        reset_on_new_batch: if True, `new_batch()` calls `reset_moments()`.

    ``opt.history`` holds the record; ``opt.new_batch()`` is the hook a training loop calls when it draws a
    new batch (it counts batches into the ``batch`` column and, optionally, resets the moments).
    ``opt.reset_moments()`` zeroes m, v and the step counter t, so the next step is a first Adam step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        diagnostics: DiagnosticsLevel = "cheap",
        reset_on_new_batch: bool = False,
    ) -> None:
        _check_level(diagnostics)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
                         capturable=capturable, differentiable=differentiable, fused=fused)
        self._diagnostics: str = diagnostics
        self.reset_on_new_batch = bool(reset_on_new_batch)
        self.history = History()
        self._snapshots: dict[Tensor, Tensor] = {}
        self._work: dict[tuple[torch.dtype, torch.device], tuple[Tensor, ...]] = {}
        self._steps_taken = 0
        self._batches = 0
        self._previous_precond: dict[str, tuple[int, float]] = {}

    # torch wraps these two in a lazy import of its compiler, torch._dynamo (about 1 s, several on a busy
    # machine), which matters only when torch.compile traces them; this optimizer is not traced (its
    # statistics read values), so it calls torch's bodies unwrapped: a lab run never pays for that import.
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _unwrapped(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _unwrapped(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    @property
    def diagnostics(self) -> str:
        return self._diagnostics

    @diagnostics.setter
    def diagnostics(self, level: DiagnosticsLevel) -> None:
        _check_level(level)
        self._diagnostics = level
        if level != "full":
            self._snapshots.clear()  # free the parameter-sized buffer

    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One AdamW step (torch's maths, bit for bit); then, unless diagnostics are off, one history row.

        Plain groups (contiguous fp32/fp64 CPU tensors, float lr and betas, no capturable/differentiable/
        fused): large parameters by a chunked loop that performs torch's operations in torch's order and
        reads the statistics off the intermediates while they are in cache, small ones by torch's loop a
        batch at a time. Anything else is stepped by torch itself and the statistics are read from the state
        afterwards (then "full" keeps θ_{t−1} in one parameter-sized buffer).
        """
        if not all(_fusable(group) for group in self.param_groups):
            if self._diagnostics == "off":
                return _torch_adamw_step(self, closure)
            return self._step_then_read_state(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._diagnostics == "off":
            for group in self.param_groups:
                self._plain_group_step(group)
            return loss
        self._steps_taken += 1
        full = self._diagnostics == "full"
        per_group = [self._group_step_with_stats(group, self._diagnostics) for group in self.param_groups]
        self._record(per_group, full)
        return loss

    def _step_then_read_state(self, closure: Callable[[], float] | None) -> Any:
        full = self._diagnostics == "full"
        if full:
            self._snapshot_parameters()
        loss = _torch_adamw_step(self, closure)
        self._steps_taken += 1
        self._record([self._group_stats_from_state(group, full) for group in self.param_groups], full)
        return loss

    @torch.no_grad()
    def reset_moments(self) -> None:
        """Zero m, v (and amsgrad's running max of v) and the step counter t of every parameter.

        The next step is therefore Adam's first step again: t = 1, bias corrections 1 − β^1, so m̂ = g and
        v̂ = g², exactly as for a freshly built AdamW on the current parameters. C_T restarts (NaN next step).
        """
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in state:
                    state[key].zero_()
            if "step" in state:
                state["step"].zero_()
        self._previous_precond.clear()

    def new_batch(self) -> None:
        """Hook for the training loop: a new batch was drawn. Resets the moments if `reset_on_new_batch`."""
        self._batches += 1
        if self.reset_on_new_batch:
            self.reset_moments()

    def __getstate__(self) -> dict[str, Any]:
        """torch pickles only defaults, state and groups; keep the record and settings too (not buffers)."""
        kept = ("_diagnostics", "reset_on_new_batch", "history", "_steps_taken", "_batches",
                "_previous_precond")
        return {**super().__getstate__(), **{name: getattr(self, name) for name in kept}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._snapshots, self._work = {}, {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._previous_precond.clear()  # C_T across a swap would compare two different runs

    @torch.no_grad()
    def _snapshot_parameters(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                buffer = self._snapshots.get(p)
                if buffer is None or buffer.shape != p.shape or buffer.dtype != p.dtype:
                    buffer = self._snapshots[p] = torch.empty_like(p)
                buffer.copy_(p)

    @torch.no_grad()
    def _plain_group_step(self, group: dict[str, Any]) -> None:
        """A step without statistics: parameters of ``CHUNKED_STEP_SIZE`` elements or more through the chunked
        loop (no parameter-sized temporaries, no slow sqrt of zeros), the smaller ones through torch's own
        loop (less Python per tensor). The same numbers either way."""
        small, large = _split_by_size(group["params"])
        if small:
            self._torch_step(group, small)
        if large:
            self._fused_group_step({**group, "params": large}, "off")

    def _torch_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """torch's functional AdamW (its `step` without the hooks) on some of a group's parameters."""
        lists: tuple[list[Tensor], ...] = ([], [], [], [], [], [])
        has_complex = self._init_group({**group, "params": params}, *lists)
        _torch_adam(*lists, foreach=group["foreach"], capturable=False, differentiable=False, fused=None,
                    has_complex=has_complex, decoupled_weight_decay=True, amsgrad=group["amsgrad"],
                    beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"],
                    weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])

    @torch.no_grad()
    def _group_step_with_stats(self, group: dict[str, Any], level: str) -> tuple[Tensor | None, float]:
        """A plain group's step and statistics: large parameters through the chunked loop, small ones a batch
        at a time (`_batches`) through torch's own loop, their statistics read from the state in one pass
        per batch. θ_{t−1} of a batch is kept in one buffer of that size."""
        small, large = _split_by_size(group["params"])
        rows: list[Tensor] = []
        scales: list[float] = []
        numel = 0
        for batch in _batches(small, self._batch_key):
            before = torch.cat([p.detach().reshape(-1) for p in batch]) if level == "full" else None
            self._torch_step(group, batch)
            batch_rows, bc1, batch_numel = self._batch_rows_from_state(group, batch, before)
            rows.append(batch_rows)
            scales += [bc1] * batch_rows.shape[0]
            numel += batch_numel
        if large:
            large_rows, large_scales, large_numel = self._fused_group_step({**group, "params": large}, level)
            rows += large_rows
            scales += large_scales
            numel += large_numel
        return _group_stats(rows, scales, numel), self._first_step(group)

    def _steps_so_far(self, p: Tensor) -> float:
        state = self.state.get(p)
        return float(state["step"]) if state else 0.0

    def _batch_key(self, p: Tensor) -> tuple[float, torch.dtype, torch.device]:
        """Parameters read in one pass share t (so the bias corrections), the dtype they are read in, and
        the device."""
        return self._steps_so_far(p), _flat(p).dtype, p.device

    def _first_step(self, group: dict[str, Any]) -> float:
        """t of the group's first parameter with a gradient (NaN if none): the group's t column."""
        return next((float(self.state[p]["step"]) for p in group["params"]
                     if p.grad is not None and self.state.get(p)), math.nan)

    @torch.no_grad()
    def _fused_group_step(self, group: dict[str, Any], level: str) -> tuple[list[Tensor], list[float], int]:
        """torch's `_single_tensor_adam` (non-capturable branch), chunk by chunk, plus the statistics: one
        (chunks, k) row tensor per parameter, 1 − β1^t per chunk, and the element count."""
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        max_exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
        beta1, beta2 = group["betas"]
        rows: list[Tensor] = []
        scales: list[float] = []
        numel = 0
        for i, p in enumerate(params):
            steps[i] += 1
            bc1, bc2_sqrt = bias_corrections(beta1, beta2, float(steps[i]))
            hyper = _Hyper(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                           eps=group["eps"], bc2_sqrt=bc2_sqrt, step_size=group["lr"] / bc1,
                           maximize=group["maximize"])
            tensors = [x.view(-1) for x in (p, grads[i], exp_avgs[i], exp_avg_sqs[i])]
            if group["amsgrad"]:
                tensors.append(max_exp_avg_sqs[i].view(-1))
            work = self._workspace(p)
            parts: list[Tensor] = []
            chunks = [tensors] if p.numel() <= CHUNK else zip(*(x.split(CHUNK) for x in tensors), strict=True)
            for chunk in chunks:
                parts += _adamw_chunk(*chunk[:4], chunk[4] if len(chunk) == 5 else None, work, hyper, level)
            if parts:
                rows.append(torch.stack(parts).view(-(-p.numel() // CHUNK), -1))
                scales += [bc1] * rows[-1].shape[0]
                numel += p.numel()
        return rows, scales, numel

    def _workspace(self, p: Tensor) -> tuple[Tensor, ...]:
        """Three scratch vectors of at least min(CHUNK, p.numel()) elements for `p`'s dtype and device (at
        most CHUNK each: never parameter-sized for a large parameter, never larger than needed for a small
        model)."""
        key = (p.dtype, p.device)
        needed = min(CHUNK, p.numel())
        work = self._work.get(key)
        if work is None or work[0].numel() < needed:
            work = self._work[key] = torch.empty(3, needed, dtype=p.dtype, device=p.device).unbind(0)
        return work

    def _record(self, per_group: list[tuple[Tensor | None, float]], full: bool) -> None:
        row: dict[str, float] = {"step": float(self._steps_taken), "batch": float(self._batches)}
        for index, (group, (stats, t)) in enumerate(zip(self.param_groups, per_group, strict=True)):
            suffix = f"/group{index}"
            row["lr" + suffix] = float(group["lr"])
            row["t" + suffix] = t
            values = self._with_c_t(_finish(stats), suffix, full)
            row.update({key + suffix: value for key, value in values.items()})
        present = [stats for stats, _ in per_group if stats is not None]
        total = _reduce_rows(torch.stack(present)) if present else None
        row.update(self._with_c_t(_finish(total), "", full))
        self.history.append(row)

    def _with_c_t(self, values: dict[str, float], scope: str, full: bool) -> dict[str, float]:
        """Add C_T = ‖u_t‖ / ‖u_{t−1}‖ (Eq. 31) when the previous step of this scope was recorded."""
        if not values:
            return values
        if not full:
            for key in FULL_KEYS:
                values[key] = math.nan
        norm = values["precond_norm"]
        previous = self._previous_precond.get(scope)
        consecutive = previous is not None and previous[0] == self._steps_taken - 1
        values["c_t"] = norm / previous[1] if consecutive and previous[1] > 0 else math.nan
        self._previous_precond[scope] = (self._steps_taken, norm)
        return values

    @torch.no_grad()
    def _group_stats_from_state(self, group: dict[str, Any], full: bool) -> tuple[Tensor | None, float]:
        """Statistics of a group that torch has just stepped, read from its state (and the θ snapshot)."""
        params = [p for p in group["params"] if p.grad is not None and self.state.get(p) and p.numel() > 0]
        befores = [self._snapshots[p] for p in params] if full else None
        rows, scales, numel = self._rows_from_state(group, params, befores)
        return _group_stats(rows, scales, numel), self._first_step({"params": params})

    def _rows_from_state(self, group: dict[str, Any], params: list[Tensor],
                         befores: list[Tensor] | None) -> tuple[list[Tensor], list[float], int]:
        """Statistics rows of parameters torch has just stepped (`befores`: their θ_{t−1}, for "full"), a
        batch per pass (`_batches`), and 1 − β1^t per row and the element count."""
        before_of = dict(zip(map(id, params), befores, strict=True)) if befores is not None else None
        rows: list[Tensor] = []
        scales: list[float] = []
        numel = 0
        for batch in _batches(params, self._batch_key):
            before = None if before_of is None else _joined([before_of[id(p)] for p in batch])
            batch_rows, bc1, batch_numel = self._batch_rows_from_state(group, batch, before)
            rows.append(batch_rows)
            scales += [bc1] * batch_rows.shape[0]
            numel += batch_numel
        return rows, scales, numel

    def _batch_rows_from_state(self, group: dict[str, Any], batch: list[Tensor],
                               before: Tensor | None) -> tuple[Tensor, float, int]:
        """The (chunks, k) statistics rows of one batch (`before`: its θ_{t−1}, flat, for "full"), its
        1 − β1^t and its element count: a large parameter chunk by chunk, small ones joined."""
        beta1, beta2 = (float(b) for b in group["betas"])
        bc1, bc2_sqrt = bias_corrections(beta1, beta2, self._steps_so_far(batch[0]))
        states = [self.state[p] for p in batch]
        flat = [_joined([p.grad for p in batch]), _joined([s["exp_avg"] for s in states]),
                _joined([second_moment(s, group["amsgrad"]) for s in states])]
        if before is not None:
            flat += [_joined(batch), before]
        rows = []
        for start, size in _chunks(flat[0].numel()):
            g, m, v, *motion = (x.narrow(0, start, size) for x in flat)
            theta, before_chunk = motion if motion else (None, None)
            rows.append(_chunk_stats_from_state(g, m, v, bc2_sqrt, float(group["eps"]), theta, before_chunk))
        batch_rows = torch.stack(rows)
        if group["maximize"] and before is not None:  # torch descends along +grad: flip ⟨Δθ, g⟩
            batch_rows[:, _STATS.index("dg")] *= -1
        return batch_rows, bc1, flat[0].numel()


def _group_stats(chunk_rows: list[Tensor], bc1: list[float], numel: int) -> Tensor | None:
    """Reduce a group's chunk rows ((chunks, k) tensors, `bc1` per chunk) to one float64 CPU row over all
    `_STATS` columns, None when no parameter had a gradient.

    m̂ = m / bc1 turns ‖m‖² and ‖m/(√v̂+ε)‖² into their m̂ forms.
    """
    if not chunk_rows:
        return None
    rows = torch.cat([r.to(device="cpu", dtype=torch.float64) for r in chunk_rows])
    scale = torch.tensor(bc1, dtype=torch.float64).square_()
    rows[:, _STATS.index("mm")] /= scale
    rows[:, _STATS.index("uu")] /= scale
    stats = _reduce_rows(rows)
    missing = len(_STATS) - 1 - stats.numel()
    return torch.cat([stats, torch.full((missing,), math.nan, dtype=torch.float64),
                      torch.tensor([float(numel)], dtype=torch.float64)])


def _split_by_size(params: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters with a gradient, split into those under ``CHUNKED_STEP_SIZE`` elements and the rest."""
    with_grad = [p for p in params if p.grad is not None]
    return ([p for p in with_grad if p.numel() < CHUNKED_STEP_SIZE],
            [p for p in with_grad if p.numel() >= CHUNKED_STEP_SIZE])


def _batches(params: list[Tensor], key: Callable[[Tensor], object]) -> Iterable[list[Tensor]]:
    """Runs of consecutive parameters with the same key and at most CHUNK elements in all (a larger
    parameter is a batch of its own), so that their statistics take one pass."""
    batch: list[Tensor] = []
    size, batch_key = 0, None
    for p in params:
        p_key = key(p)
        if batch and (p_key != batch_key or size + p.numel() > CHUNK):
            yield batch
            batch, size = [], 0
        batch.append(p)
        size += p.numel()
        batch_key = p_key
    if batch:
        yield batch


def _joined(tensors: list[Tensor]) -> Tensor:
    """One flat real vector of the tensors' elements (`_flat` of each; a copy when there are several)."""
    flat = [_flat(t) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat)


def _fusable(group: dict[str, Any]) -> bool:
    """Groups the chunked step handles: real contiguous fp32/fp64 CPU tensors, float hyper-parameters, plain
    mode. (On accelerators torch's foreach kernels need not round like its single-tensor ones.)"""
    plain = not (group["capturable"] or group["differentiable"] or group["fused"])
    floats = all(isinstance(x, float | int) for x in (group["lr"], *group["betas"]))
    tensors = all(p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) and p.is_contiguous()
                  and (p.grad is None or (p.grad.is_contiguous() and not p.grad.is_sparse))
                  for p in group["params"])
    return plain and floats and tensors


def _torch_adamw_step(optimizer: torch.optim.AdamW, closure: Callable[[], float] | None) -> Any:
    """torch's AdamW step without torch's hook wrapper: our own `step` is already wrapped, so the step
    hooks (and the scheduler's bookkeeping) must run once, not twice."""
    step = torch.optim.AdamW.step
    while getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(optimizer, closure)


def _unwrapped(method: Callable[..., Any]) -> Callable[..., Any]:
    """The function under torch's decorators (``functools.wraps`` keeps it as ``__wrapped__``)."""
    while hasattr(method, "__wrapped__"):
        method = method.__wrapped__
    return method


def _check_level(level: object) -> None:
    if level not in LEVELS:
        raise ValueError(f"diagnostics must be one of {LEVELS}, got {level!r}")
