"""Audit a trainer's configuration before a long run: ``python -m companion audit CONFIG``.

CONFIG is a TRL 1.16 ``GRPOConfig`` (JSON or YAML, the flat file TRL's CLI reads, or a shell script with a
training command's ``--field value`` arguments) or a verl 0.9.1 configuration (nested YAML/JSON, or a
script with Hydra overrides ``actor_rollout_ref.actor.loss_agg_mode=token-mean``). The audit prints

- the Eq. 1 reading of the loss (``cp.Objective.from_trl`` / ``from_verl``) and the Table 1 row it matches;
- for each finding of chapters 3 to 6, whether the configuration is exposed, the numbers behind it
  (measured on the configuration's own Objective, or from ``cp.theory``), what to log and what to change:

  ch03  shared prefixes (Prop. 1): the net push W_agg on a prefix a whole group shares;
  ch04  reward scale (Props. 2, 5, 6): the scale below which the σ stabiliser or Adam's ε takes over;
  ch05  momentum past the clip (Props. 3, 7): inner steps, C_T and the drift after the clip;
  ch06  the loss is not progress (Prop. 4): whether the logged loss can move at all.

Unknown fields, duplicated fields and contradictory settings are an :class:`AuditError` naming them.
Programmatic use::

    report = cp.audit.audit("grpo.yaml")        # or a dict, with trainer="trl" / "verl"
    print(report.text())
    report.exposed                              # {"ch03", ...}
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from companion import _trainer_fields as known
from companion import methods, theory, trainers
from companion.objective import Objective

TRAINERS = ("trl", "verl")
CHAPTERS = {"ch03": "Shared prefixes (Prop. 1)", "ch04": "Reward scale and AdamW (Props. 2, 5, 6)",
            "ch05": "Momentum past the clip (Props. 3, 7)", "ch06": "The loss is not progress (Prop. 4)"}
TRL_STD_STABILISER, VERL_STD_STABILISER = 1e-4, 1e-6
SHRINK = 0.9  # the advantage keeps 90% of its size at a reward spread of 9x the stabiliser
SHORT_LENGTH_RATIO = 4  # ch03's example group: correct answers 4x shorter than wrong ones

TRL_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-6, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "weight_decay": 0.0,
    "max_grad_norm": 1.0, "optim": "adamw_torch_fused", "num_iterations": 1, "steps_per_generation": None,
    "generation_batch_size": None, "gradient_accumulation_steps": 1, "num_generations": 8,
    "per_device_train_batch_size": 8, "max_completion_length": 512, "fp16": False, "bf16": None,
}
VERL_DEFAULTS: dict[str, Any] = {
    "actor_rollout_ref.actor.optim.lr": 1e-6, "actor_rollout_ref.actor.optim.betas": [0.9, 0.999],
    "actor_rollout_ref.actor.optim.weight_decay": 0.01, "actor_rollout_ref.actor.optim.optimizer": "AdamW",
    "actor_rollout_ref.actor.optim.clip_grad": 1.0, "actor_rollout_ref.actor.optim.override_optimizer_config":
    None, "actor_rollout_ref.actor.ppo_epochs": 1, "actor_rollout_ref.actor.ppo_mini_batch_size": 256,
    "actor_rollout_ref.rollout.n": 1, "data.train_batch_size": 1024, "data.max_response_length": 512,
    "algorithm.adv_estimator": "gae", "algorithm.use_kl_in_reward": False,
}
_VERL_ACTOR_READ = ("clip_ratio", "clip_ratio_low", "clip_ratio_high", "clip_ratio_c", "tau_pos", "tau_neg",
                    "use_kl_loss", "kl_loss_coef", "kl_loss_type", "loss_scale_factor", "loss_agg_mode")
_ADAM_EPS = 1e-8  # torch's AdamW default, which verl's optimizer config does not override


class AuditError(ValueError):
    """A configuration the audit cannot read: unknown, duplicated or contradictory fields, bad values."""


# --- reading --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainerConfig:
    """What the audit needs from a configuration, in the book's terms."""

    trainer: str
    objective: Objective | None  # None: no Eq. 1 reading (TRL's vespo)
    group_size: int
    inner_steps: int  # μ: optimizer steps on each batch of samples (the first one is on-policy)
    max_completion_length: int
    optimizer: str
    betas: tuple[float, float]
    eps: float
    lr: float
    weight_decay: float
    grad_clip: float | None
    std_stabiliser: float
    group_advantages: bool = True  # the advantages are centred per group (Eq. 2), not a critic's
    notes: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def adam(self) -> bool:
        name = self.optimizer.lower()
        return "adam" in name and "ademamix" not in name and "schedule_free" not in name


def load(source: str | Path | Mapping[str, Any], trainer: str | None = None) -> TrainerConfig:
    """Read a configuration (a path or a mapping) as a :class:`TrainerConfig`."""
    if trainer is not None and trainer not in TRAINERS:
        raise AuditError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    values = dict(source) if isinstance(source, Mapping) else read_file(Path(source))
    kind = trainer or detect(values)
    return read_trl(values) if kind == "trl" else read_verl(values)


def read_file(path: Path) -> dict[str, Any]:
    """The fields of a JSON / YAML file, or of the command line in a script (TRL ``--field value`` or verl
    Hydra ``a.b.c=value``, as a flat dict with dotted keys)."""
    if not path.is_file():
        raise AuditError(f"no configuration file at {path}")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            values = json.loads(text, object_pairs_hook=_no_duplicates(path))
        except json.JSONDecodeError as error:
            raise AuditError(f"{path} is not valid JSON: {error}") from error
    elif path.suffix in (".yaml", ".yml"):
        values = _read_yaml(text, path)
    else:
        values = parse_command_line(text)
    if not isinstance(values, dict):
        raise AuditError(f"{path} must hold a mapping of fields, got a {type(values).__name__}")
    return values


def detect(values: Mapping[str, Any]) -> str:
    """"verl" when the fields are verl's sections (nested or dotted), "trl" when they are flat."""
    roots = {key.split(".")[0].lstrip("+") for key in values}
    verl_roots = roots & {"actor_rollout_ref", "algorithm", "data", "critic", "trainer", "reward_model"}
    trl_fields = roots & set(known.TRL_GRPO_CONFIG_FIELDS)
    if verl_roots and trl_fields:
        raise AuditError(f"contradictory: the file mixes verl sections {sorted(verl_roots)} with TRL fields "
                         f"{sorted(trl_fields)}; audit one trainer's configuration at a time")
    return "verl" if verl_roots else "trl"


def read_trl(values: Mapping[str, Any]) -> TrainerConfig:
    """A TRL 1.16 GRPOConfig (plus the fields of TRL's ``grpo`` script, which the audit ignores)."""
    unknown = sorted(set(values) - set(known.TRL_GRPO_CONFIG_FIELDS) - set(known.TRL_SCRIPT_FIELDS))
    if unknown:
        raise AuditError(f"unknown field(s) for TRL {known.TRL_VERSION}'s GRPOConfig: {unknown}"
                         + _suggestions(unknown, known.TRL_GRPO_CONFIG_FIELDS))
    config = {**TRL_DEFAULTS, **values}
    _trl_contradictions(config)
    loss = {name: values[name] for name in trainers.TRL_FIELDS if name in values}
    notes = []
    if config.get("loss_type") == "vespo":
        objective = None
        notes.append("loss_type='vespo' (a gamma-shaped weight of the sequence ratio) has no Eq. 1 reading: "
                     "the loss findings below are skipped")
    else:
        objective = _build(Objective.from_trl, loss)
    steps = config["steps_per_generation"] or config["gradient_accumulation_steps"]
    if config["generation_batch_size"] and not config["steps_per_generation"]:
        steps = config["generation_batch_size"] // config["per_device_train_batch_size"]
    inner = _positive_int("num_iterations", config["num_iterations"]) * max(
        steps // _positive_int("gradient_accumulation_steps", config["gradient_accumulation_steps"]), 1)
    return TrainerConfig(
        trainer="trl", objective=objective,
        group_size=_positive_int("num_generations", config["num_generations"]), inner_steps=inner,
        max_completion_length=_positive_int("max_completion_length", config["max_completion_length"]),
        optimizer=str(config["optim"]),
        betas=(_beta("adam_beta1", config["adam_beta1"]), _beta("adam_beta2", config["adam_beta2"])),
        eps=_number("adam_epsilon", config["adam_epsilon"]),
        lr=_number("learning_rate", config["learning_rate"]),
        weight_decay=_number("weight_decay", config["weight_decay"]),
        grad_clip=_number("max_grad_norm", config["max_grad_norm"]) or None,
        std_stabiliser=TRL_STD_STABILISER, notes=tuple(notes), fields=dict(values))


def read_verl(values: Mapping[str, Any]) -> TrainerConfig:
    """A verl 0.9.1 configuration: nested sections, or dotted keys from Hydra overrides."""
    flat = _flatten(values)
    _verl_unknown(flat)
    config = {**VERL_DEFAULTS, **flat}
    actor = "actor_rollout_ref.actor."
    fields_ = {name: config[actor + name] for name in _VERL_ACTOR_READ if actor + name in config}
    fields_["policy_loss"] = config.get(actor + "policy_loss.loss_mode", "vanilla")
    estimator = config["algorithm.adv_estimator"]
    notes, group_advantages = [], True
    if estimator in trainers.VERL_ADV_ESTIMATORS:
        fields_["adv_estimator"] = estimator
    else:
        group_advantages = False
        notes.append(f"algorithm.adv_estimator={estimator!r}: the advantages are not group-relative (Eq. 2 "
                     "does not apply); the loss is read with its clip, weights and regulariser only")
    if "algorithm.norm_adv_by_std_in_grpo" in config:
        fields_["norm_adv_by_std_in_grpo"] = config["algorithm.norm_adv_by_std_in_grpo"]
    objective = _build(Objective.from_verl, fields_)
    n = _positive_int("actor_rollout_ref.rollout.n", config["actor_rollout_ref.rollout.n"])
    batch = _positive_int("data.train_batch_size", config["data.train_batch_size"])
    mini = _positive_int("actor_rollout_ref.actor.ppo_mini_batch_size", config[actor + "ppo_mini_batch_size"])
    _verl_contradictions(estimator, n, batch, mini, config)
    betas = config[actor + "optim.betas"]
    if not (isinstance(betas, list | tuple) and len(betas) == 2):
        raise AuditError(f"actor_rollout_ref.actor.optim.betas must be [beta1, beta2], got {betas!r}")
    override = config[actor + "optim.override_optimizer_config"] or {}
    if config["algorithm.use_kl_in_reward"]:
        notes.append("algorithm.use_kl_in_reward=True: a KL penalty is subtracted from the rewards, so the "
                     "reward scale and the KL are tied (ch04)")
    return TrainerConfig(
        trainer="verl", objective=objective, group_size=n,
        inner_steps=_positive_int("ppo_epochs", config[actor + "ppo_epochs"]) * max(batch // mini, 1),
        max_completion_length=_positive_int("data.max_response_length", config["data.max_response_length"]),
        optimizer=str(config[actor + "optim.optimizer"]),
        betas=(_beta("optim.betas[0]", betas[0]), _beta("optim.betas[1]", betas[1])),
        eps=_number("optim eps", override.get("eps", _ADAM_EPS)),
        lr=_number("optim.lr", config[actor + "optim.lr"]),
        weight_decay=_number("optim.weight_decay", config[actor + "optim.weight_decay"]),
        grad_clip=_number("optim.clip_grad", config[actor + "optim.clip_grad"]) or None,
        std_stabiliser=VERL_STD_STABILISER, group_advantages=group_advantages, notes=tuple(notes),
        fields=flat)


def parse_command_line(text: str) -> dict[str, Any]:
    """Fields from a training command: ``--field value`` / ``--field=value`` / ``--flag`` (TRL's parser) or
    Hydra's ``a.b.c=value`` (verl). Anything before the first field (``accelerate launch train.py``,
    environment variables) is skipped; a field given twice is an AuditError."""
    tokens = shlex.split(text.replace("\\\n", " "), comments=True)
    tokens = tokens[_first_argument(tokens):]
    values: dict[str, Any] = {}
    key: str | None = None
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, _, value = token[2:].partition("=")
            key = name.replace("-", "_")
            _set_once(values, key, _scalar(value) if value else True)
            key = None if value else key
        elif re.fullmatch(r"\+{0,2}[A-Za-z_][\w.]*\.[\w.]+=.*", token):
            name, _, value = token.partition("=")
            _set_once(values, name.lstrip("+"), _scalar(value))
            key = None
        elif key is not None:
            previous = values[key]
            values[key] = _scalar(token) if previous is True else [*_as_list(previous), _scalar(token)]
    return values


# --- findings -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One chapter's finding for a configuration."""

    chapter: str
    exposed: bool
    summary: str
    numbers: tuple[str, ...]
    log: str
    change: str


@dataclass(frozen=True)
class Audit:
    """The Eq. 1 reading, the Table 1 row and the findings of chapters 3 to 6 for one configuration."""

    config: TrainerConfig
    reading: dict[str, str]
    table1_row: str
    findings: tuple[Finding, ...]

    @property
    def exposed(self) -> set[str]:
        """The chapters whose finding the configuration is exposed to."""
        return {f.chapter for f in self.findings if f.exposed}

    def finding(self, chapter: str) -> Finding:
        return next(f for f in self.findings if f.chapter == chapter)

    def text(self, width: int = 100) -> str:
        """The report, each line wrapped at ``width`` characters."""
        import textwrap

        lines = self._lines()
        out = []
        for line in lines:
            indent = " " * (len(line) - len(line.lstrip()) + (2 if line.lstrip().startswith("- ") else 0))
            out += textwrap.wrap(line, width, subsequent_indent=indent + "  ") or [""]
        return "\n".join(out)

    def _lines(self) -> list[str]:
        c = self.config
        lines = [f"{c.trainer} configuration: group size G = {c.group_size}, {c.inner_steps} optimizer "
                 f"step(s) per batch of samples, completions up to {c.max_completion_length} tokens",
                 f"optimizer: {c.optimizer}, lr = {c.lr:g}, betas = ({c.betas[0]:g}, {c.betas[1]:g}), "
                 f"eps = {c.eps:g}, weight decay = {c.weight_decay:g}, grad clip = {c.grad_clip}", ""]
        lines += ["Eq. 1 reading:"] + [f"  {k:10s} {v}" for k, v in self.reading.items()]
        lines += [f"  Table 1    {self.table1_row}"]
        lines += [f"  note       {note}" for note in c.notes]
        for f in self.findings:
            lines += ["", f"[{f.chapter}] {CHAPTERS[f.chapter]}: {'EXPOSED' if f.exposed else 'not exposed'}",
                      f"  {f.summary}"]
            lines += [f"  - {number}" for number in f.numbers]
            lines += [f"  log:    {f.log}", f"  change: {f.change} (read {f.chapter})"]
        return lines


def audit(source: str | Path | Mapping[str, Any] | TrainerConfig, trainer: str | None = None, *,
          sqrt_v_hat: float | None = None) -> Audit:
    """Audit a configuration. ``sqrt_v_hat``: the gradient RMS √v̂ of your run at reward scale 1 (e.g. the
    ``companion/opt_sqrt_v_hat_mean`` that DiagnosticsCallback logs), which turns ch04's threshold into a
    number."""
    config = source if isinstance(source, TrainerConfig) else load(source, trainer)
    if sqrt_v_hat is not None and not sqrt_v_hat > 0:
        raise AuditError(f"sqrt_v_hat must be > 0, got {sqrt_v_hat!r}")
    obj = config.objective
    reading = eq1_reading(obj) if obj is not None else {"loss": "no Eq. 1 reading (see the note)"}
    findings = (prefix_finding(config), reward_scale_finding(config, sqrt_v_hat), momentum_finding(config),
                loss_finding(config))
    return Audit(config, reading, table1_match(obj) if obj is not None else "–",
                 tuple(f for f in findings if f is not None))


def eq1_reading(objective: Objective) -> dict[str, str]:
    """α, s, R, the advantage and the clip, as Table 1 writes them (``companion.methods``)."""
    return {"α_{i,t}": methods.alpha_text(objective), "s_{i,t}": methods.ratio_text(objective),
            "R(θ)": methods.regulariser_text(objective), "advantage": methods.advantage_text(objective),
            "ε": methods.clip_text(objective)}


def differences(a: Objective, b: Objective) -> dict[str, tuple[Any, Any]]:
    """The fields both losses read, where they differ (KL fields only when β > 0 on either side)."""
    skip = {"name", "source", "max_log_ratio", "std_eps", "std_correction"}
    if not (a.beta or b.beta):
        skip |= {"kl", "kl_ratio_weighted", "kl_clamped", "kl_straight_through", "kl_aggregation"}
    out = {}
    for f in fields(Objective):
        if f.compare and f.name not in skip:
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name == "kl_aggregation":
                x, y = x or a.aggregation, y or b.aggregation
            if x != y:
                out[f.name] = (x, y)
    return out


def table1_match(objective: Objective) -> str:
    """The Table 1 row with the fewest differing fields, and the presets it equals exactly."""
    rows = {name: differences(objective, methods.PRESETS[name].objective) for name in methods.TABLE1}
    best = min(rows, key=lambda name: len(rows[name]))
    label = methods.PRESETS[best].label
    diff = rows[best]
    text = f"{label} (exact)" if not diff else f"closest: {label}, differing in " + ", ".join(
        f"{k} = {_show(v[0])} here, {_show(v[1])} in the row" for k, v in diff.items())
    equal = [methods.PRESETS[n].label for n in methods.EXTRAS
             if not differences(objective, methods.PRESETS[n].objective)]
    return text + (f"; equal to the preset {', '.join(equal)}" if equal else "")


def prefix_finding(config: TrainerConfig) -> Finding | None:
    """ch03: W_agg on a prefix a whole group shares, in a group whose correct answers are shorter."""
    obj = config.objective
    if obj is None:
        return None
    if not config.group_advantages:
        return Finding("ch03", False, "advantages are not centred per group: Prop. 1's cancellation does not "
                       "apply, and neither does its bias", (), "w_agg_max, prefix_net_push",
                       "nothing for Prop. 1 (choose a group estimator to use its results)")
    long = config.max_completion_length
    short = max(long // SHORT_LENGTH_RATIO, 1)
    net, w_agg = shared_prefix_push(obj, config.group_size, short, long)
    w_agg = 0.0 if abs(w_agg) < 1e-12 else w_agg  # a sum of ±equal terms: rounding, not a push
    exposed = net > 1e-6
    numbers = (f"a group of {config.group_size} sharing its first token, half right with {short} tokens and "
               f"half wrong with {long}: W_agg = {w_agg:.3g}, a net push of {net:.0%} of the gross",)
    if exposed:
        summary = ("the weights ω = α·s differ between completions, so a prefix the whole group shares is "
                   "pushed by Σ ω_i A_i ≠ 0: towards the format of the short correct answers here")
        change = {"trl": "loss_type='dapo' or 'dr_grpo' (the same weight for every token)",
                  "verl": "loss_agg_mode='token-mean' or 'seq-mean-token-sum'"}[config.trainer]
    else:
        summary = "every completion's tokens weigh the same: W_agg = C·Σ A_i = 0 on a prefix the group shares"
        change = "nothing: keep a constant per-token weight"
    return Finding("ch03", exposed, summary, numbers,
                   "companion/w_agg_max and companion/prefix_net_push (DiagnosticsCallback)", change)


def shared_prefix_push(objective: Objective, group_size: int, short: int, long: int) -> tuple[float, float]:
    """(net push |W_agg| / Σ|ω A|, W_agg) at the first token of a group that shares it, at s = 1: half the
    completions right with ``short`` tokens, half wrong with ``long`` (the objective's own weights)."""
    half = group_size // 2
    lengths = torch.tensor([short] * half + [long] * (group_size - half))
    rewards = torch.tensor([1.0] * half + [0.0] * (group_size - half), dtype=torch.float64)
    mask = (torch.arange(long) < lengths[:, None]).double()
    logp = torch.zeros_like(mask)
    adv = objective.advantages(rewards, group_size, mask)
    out = objective.loss(logp, logp, adv, mask, ref_logprobs=logp, tokens=torch.zeros_like(mask).long(),
                         entropies=torch.zeros_like(mask), group_size=group_size)
    push = out.weights[:, 0] * (adv if adv.dim() == 1 else adv[:, 0])
    gross = float(push.abs().sum())
    return (abs(float(push.sum())) / gross if gross > 0 else 0.0), float(push.sum())


def reward_scale_finding(config: TrainerConfig, sqrt_v_hat: float | None) -> Finding | None:
    """ch04: what rescaling the rewards by φ changes (Props. 2, 5, 6)."""
    obj = config.objective
    if obj is None:
        return None
    stabiliser = config.std_stabiliser
    spread = stabiliser * SHRINK / (1 - SHRINK)
    normalised = obj.std_scale is not None or obj.baseline == "batch_whiten"
    scale = _gradient_scale(obj, config)
    numbers = []
    if normalised:
        exposed = False
        summary = ("the advantages are divided by σ(r), so a reward scale φ cancels for any optimizer; only "
                   "nearly tied groups feel the stabiliser")
        numbers.append(f"σ stabiliser {stabiliser:g}: a group whose reward spread φσ is below {spread:.1g} "
                       f"keeps less than {SHRINK:.0%} of its advantage")
        change = "nothing for the reward scale"
    else:
        exposed = True
        summary = ("the advantages scale with the rewards (A* = φA, Prop. 5), so the AdamW step is "
                   "invariant only while ε ≪ φ√v̂ (Eq. 27)" + ("; and β > 0 ties the KL's weight to φ"
                                                              if obj.beta else ""))
        change = ("divide the rewards by their spread (TRL scale_rewards='group', verl "
                  "norm_adv_by_std_in_grpo=True), or rescale β with φ, and keep ε far below φ√v̂")
    if config.adam and not normalised:
        threshold = f"{config.eps / scale:.2g}/√v̂" if sqrt_v_hat is None else \
            f"{config.eps / (scale * sqrt_v_hat):.2g} (with √v̂ = {sqrt_v_hat:g})"
        numbers.append(f"Adam's ε = {config.eps:g} takes over below a reward scale φ = ε/(c·√v̂) = "
                       f"{threshold}, c = {scale:.3g} being the weights' constant factor")
    elif not config.adam:
        numbers.append(f"{config.optimizer} is not Adam: its step scales with the gradient (Prop. 2 needs "
                       "Adam), so only σ-normalised advantages make it scale-free")
    return Finding("ch04", exposed, summary, tuple(numbers),
                   "companion/eps_dominated_frac and opt_sqrt_v_hat_mean (DiagnosticsCallback)", change)


def _gradient_scale(objective: Objective, config: TrainerConfig) -> float:
    """The constant factor of the weights: 1/L for a constant α = 1/(N·L) (TRL's dr_grpo), else 1."""
    if objective.aggregation != "constant":
        return 1.0
    return 1.0 / (objective.constant_length or config.max_completion_length)


def momentum_finding(config: TrainerConfig) -> Finding:
    """ch05: inner steps on the same samples let the clip act, and Adam's momentum carries on past it."""
    b1, b2 = config.betas
    clipped = config.objective is None or config.objective.surrogate in ("clip", "geometric_mean")
    numbers = []
    if config.adam and b2 > 0:
        rho = theory.c_t_limit(b1, b2)
        numbers.append(f"C_T → β1/√β2 = {rho:.7g} (Eq. 33); C_T at T = 10, 100, 1000: "
                       + ", ".join(f"{theory.c_t(b1, b2, t):.4g}" for t in (10, 100, 1000)) + " (Eq. 32)")
        if config.inner_steps > 1:
            drift = theory.drift_after_vanishing(b1, b2, 1000, config.inner_steps - 1)
            numbers.append(f"within one batch, the {config.inner_steps - 1} step(s) after the clip zeroes a "
                           f"token's gradient still move it by {drift:.3g}·lr·‖u‖ (Eq. 36 summed, T = 1000)")
        numbers.append("drift after the gradient vanishes, summed to the end: "
                       + (f"{theory.drift_limit(b1, b2):.3g}·lr·‖u‖ (Eq. 37)" if rho < 1 else "unbounded")
                       + (f"; the momentum averages about {1 / (1 - b1):.3g} steps" if b1 < 1 else ""))
    exposed = config.adam and b1 > 0 and config.inner_steps > 1 and clipped
    if config.inner_steps == 1:
        summary = ("one optimizer step per batch: the ratio is 1 when the gradient is taken, so the clip "
                   "never acts and nothing is carried past it (the momentum still mixes earlier batches)")
    elif not clipped:
        summary = "no hard clip in this loss: nothing to be carried past"
    elif not config.adam or b1 == 0:
        summary = "no momentum (β1 = 0 or not Adam): a zeroed gradient stops the token"
    else:
        summary = (f"{config.inner_steps} optimizer steps per batch: once a token's ratio leaves the clip "
                   "range its gradient is 0, yet Adam keeps moving it with m̂/√v̂ (Props. 3, 7)")
    change = {"trl": "num_iterations=1 and steps_per_generation = gradient_accumulation_steps",
              "verl": "ppo_epochs=1 and ppo_mini_batch_size = train_batch_size"}[config.trainer]
    change = f"one step per batch ({change}), a smaller β1, or a dual clip" if exposed else \
        "nothing for Prop. 3"
    return Finding("ch05", exposed, summary, tuple(numbers),
                   "companion/past_clip_high, past_clip_low, ratio_max per inner_step; opt_c_t", change)


def loss_finding(config: TrainerConfig) -> Finding | None:
    """ch06: the value of the loss at an on-policy step, measured on the configuration's Objective."""
    obj = config.objective
    if obj is None:
        return None
    if not config.group_advantages:
        summary = ("advantages from a critic: at an on-policy step the loss is −Σ α_{i,t} A_{i,t}, a "
                   "weighted mean of advantages that verl whitens over the batch, so it hovers near 0 "
                   "whatever the policy learns")
        return Finding("ch06", True, summary, (), "reward, accuracy, the KL to π_ref, the clip fractions "
                       "(ch06's dashboard), not the loss", "read progress from the reward and the KL, never "
                       "from the loss value")
    first_step = first_step_loss_range(obj.with_(beta=0.0, kl=None), config.group_size)
    frozen = first_step < 1e-9 and config.group_advantages
    numbers = [f"policy loss at an on-policy step over random groups: |loss| ≤ {first_step:.2g}"]
    if frozen:
        what = ("identically 0 (Eq. 9): the weights give every completion the same Ω_i and the advantages "
                "of a group sum to 0")
        if obj.beta == 0 and config.inner_steps == 1:
            summary = f"the logged loss cannot move at all: {what}, at every step (β = 0, one step per batch)"
        else:
            kl = f", plus β·KL = {obj.beta:g}·KL" if obj.beta else ""
            later = ", moving only through the ratio at later inner steps" if config.inner_steps > 1 else ""
            summary = f"the logged loss is {what}{kl}{later}"
    else:
        summary = ("the logged loss is a statistic of the weights, Σ_i Ω_i A_i ∝ Cov(A, Ω) (Eqs. 10, 11): "
                   "with length-dependent Ω it follows the length–reward correlation, not progress")
    if obj.beta:
        numbers.append(f"β = {obj.beta:g}: the KL term rises as the policy leaves π_ref, and the loss too")
    return Finding("ch06", True, summary, tuple(numbers),
                   "reward, accuracy, companion/kl_ref, the clip fractions (ch06's dashboard), not the loss",
                   "read progress from the reward and the KL, never from the loss value")


def first_step_loss_range(objective: Objective, group_size: int, groups: int = 8, trials: int = 16) -> float:
    """The largest |policy loss| at s = 1 (π_θ = π_old, β = 0) over random groups with random lengths and
    binary rewards, relative to the largest |A|."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(trials):
        n = groups * group_size
        lengths = torch.randint(1, 33, (n,), generator=generator)
        mask = (torch.arange(32) < lengths[:, None]).double()
        rewards = torch.randint(0, 2, (n,), generator=generator).double()
        adv = objective.advantages(rewards, group_size, mask)
        logp = torch.zeros_like(mask)
        out = objective.loss(logp, logp, adv, mask, tokens=torch.zeros_like(mask).long(),
                             entropies=torch.zeros_like(mask), group_size=group_size)
        scale = float(adv.abs().max()) or 1.0
        worst = max(worst, abs(float(out.policy_loss)) / scale)
    return worst


# --- helpers --------------------------------------------------------------------------------------------
def _build(builder: Any, fields_: dict[str, Any]) -> Objective:
    try:
        return builder(**fields_)
    except (TypeError, ValueError) as error:
        raise AuditError(str(error)) from error


def _trl_contradictions(config: dict[str, Any]) -> None:
    if config["fp16"] and config["bf16"]:
        raise AuditError("contradictory: fp16=True and bf16=True (choose one precision)")
    per_device = _positive_int("per_device_train_batch_size", config["per_device_train_batch_size"])
    steps, generation = config["steps_per_generation"], config["generation_batch_size"]
    if steps is not None and generation is not None and generation % (per_device * steps):
        raise AuditError(f"contradictory: generation_batch_size={generation} is not "
                         f"per_device_train_batch_size × steps_per_generation = {per_device} × {steps} "
                         "(times a number of processes)")
    group = _positive_int("num_generations", config["num_generations"])
    if group < 2:
        raise AuditError(f"num_generations={group}: a group method needs at least 2 completions per prompt")
    batch = generation or per_device * (steps or config["gradient_accumulation_steps"])
    if batch % group:
        raise AuditError(f"contradictory: the generation batch ({batch} completions, one process) is not a "
                         f"multiple of num_generations={group}")


def _verl_unknown(flat: dict[str, Any]) -> None:
    """Keys outside verl's top-level sections, or unknown inside a section the audit reads."""
    sections = sorted(known.VERL_SECTION_FIELDS, key=lambda s: -s.count("."))
    unknown = []
    for key in flat:
        parts = key.split(".")
        in_ref = parts[0] == "actor_rollout_ref" and len(parts) > 1
        if parts[0] not in (*known.VERL_TOP_LEVEL, "defaults", "hydra") or (
                in_ref and parts[1] not in known.VERL_ACTOR_ROLLOUT_REF):
            unknown.append(key)
            continue
        section = next((s for s in sections if key.startswith(s + ".")), None)
        child = key[len(section) + 1:].split(".")[0] if section is not None else None
        if section is not None and child not in known.VERL_SECTION_FIELDS[section]:
            unknown.append(key)
    if unknown:
        raise AuditError(f"unknown field(s) for verl {known.VERL_VERSION}: {sorted(unknown)}")


def _verl_contradictions(estimator: str, n: int, batch: int, mini: int, config: dict[str, Any]) -> None:
    if estimator in ("grpo", "rloo", "gpg") and n < 2:
        raise AuditError(f"contradictory: algorithm.adv_estimator={estimator!r} compares the completions of "
                         f"a group, but actor_rollout_ref.rollout.n={n} samples one per prompt")
    if mini > batch or batch % mini:
        raise AuditError(f"contradictory: data.train_batch_size={batch} is not a multiple of "
                         f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        nested = isinstance(value, Mapping) and not name.endswith("override_optimizer_config")
        if nested and name.count(".") < 3:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _read_yaml(text: str, path: Path) -> Any:
    from companion._extras import require

    require("audit", "yaml", feature="reading a YAML configuration")
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict[str, Any]:
        keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise AuditError(f"contradictory: {path} sets {repeated} more than once")
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise AuditError(f"{path} is not valid YAML: {error}") from error


def _no_duplicates(path: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise AuditError(f"contradictory: {path} sets {repeated} more than once")
        return dict(pairs)

    return hook


def _set_once(values: dict[str, Any], key: str, value: Any) -> None:
    if key in values:
        raise AuditError(f"contradictory: the command line sets {key!r} more than once")
    values[key] = value


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null", "~"):
        return None
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part.strip()) for part in text[1:-1].split(",") if part.strip()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _first_argument(tokens: list[str]) -> int:
    """Where the script's own arguments start: after ``train.py`` or ``-m module`` (launchers such as
    ``accelerate launch --num_processes 1`` come before), else at the first token."""
    for i, token in enumerate(tokens):
        if token.endswith(".py"):
            return i + 1
        if token == "-m" and i + 1 < len(tokens):
            return i + 2
    return 0


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _suggestions(unknown: list[str], valid: tuple[str, ...]) -> str:
    import difflib

    hints = [f"{name!r} → {match[0]!r}" for name in unknown
             if (match := difflib.get_close_matches(name, valid, n=1))]
    return f" (did you mean: {', '.join(hints)})" if hints else ""


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AuditError(f"{name} must be a positive integer, got {value!r}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuditError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _beta(name: str, value: Any) -> float:
    beta = _number(name, value)
    if not 0.0 <= beta < 1.0:
        raise AuditError(f"{name} must be in [0, 1), got {value!r}")
    return beta


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def main(argv: list[str] | None = None) -> int:
    """``python -m companion audit CONFIG [--trainer trl|verl] [--sqrt-v-hat X]``."""
    import argparse
    import sys

    description = ("Which of the book's biases a TRL or verl configuration is exposed to, with the numbers, "
                   "what to log and what to change.")
    parser = argparse.ArgumentParser(prog="python -m companion audit", description=description)
    parser.add_argument("config", help="a GRPOConfig (JSON/YAML), a verl YAML, or a script's command line")
    parser.add_argument("--trainer", choices=TRAINERS, help="force the reading (default: detected)")
    parser.add_argument("--sqrt-v-hat", type=float, help="your run's gradient RMS √v̂ at reward scale 1")
    args = parser.parse_args(argv)
    try:
        report = audit(args.config, args.trainer, sqrt_v_hat=args.sqrt_v_hat)
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.text())
    return 0
