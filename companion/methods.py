"""The methods of Table 1 and the extras, as ``Objective`` presets, and Table 1 rendered from them.

``PRESETS[name]`` is a :class:`Method`: the objective, its source (a key of ``book/references.bib``) and
what the preset had to choose where the source is silent. ``methods_table()`` derives α, s, R and the
advantage of every row from the objective's fields, so the table cannot drift from the code::

    import companion as cp
    cp.Objective.preset("dapo")            # the Objective
    cp.PRESETS["dapo"].source              # 'yu2025dapo'
    print(cp.methods_table())              # Table 1 as markdown

Shared choices: ε = 0.2 where a method keeps PPO's clip without its own value, β = 0.04 (DeepSeekMath's)
for the methods whose R is a KL, σ with Bessel's correction and 1e-4 added (TRL's), as Table 1 leaves
them open.
"""

from __future__ import annotations

from dataclasses import dataclass

from companion.objective import Objective

TABLE1 = ("grpo_r1", "grpo_v32", "gspo", "gtpo", "dapo", "cppo", "dr_grpo", "gpg", "cispo", "gcpo")
EXTRAS = ("ppo", "grpo", "bnpo", "sapo", "gmpo", "rloo", "reinforce_pp")
KL_BETA = 0.04


@dataclass(frozen=True)
class Method:
    """A preset: the objective, the paper it comes from, and the choices the preset made."""

    name: str
    label: str  # as Table 1 prints it
    objective: Objective
    source: str  # bibtex key in book/references.bib
    notes: str = ""

    @property
    def in_table1(self) -> bool:
        return self.name in TABLE1


def _method(name: str, label: str, source: str, notes: str = "", **fields: object) -> Method:
    return Method(name, label, Objective(name=name, source=source, **fields), source, notes)


def _from_trainer(name: str, label: str, source: str, notes: str, objective: Objective) -> Method:
    return Method(name, label, objective.with_(name=name, source=source), source, notes)


_KL = dict(kl="k3", beta=KL_BETA)

_METHODS = (
    _method("grpo_r1", "GRPO (R1)", "shao2024deepseekmath",
            "DeepSeekMath's GRPO as DeepSeek-R1 uses it: α = 1/(G|o_i|σ), clip 0.2, k3 KL with β = 0.04.",
            **_KL),
    _method("grpo_v32", "GRPO (v3.2)", "deepseekai2025v32",
            "No σ; the off-policy sequence mask M (A_i < 0 and mean log π_old/π_θ > δ = 0.5, TRL's "
            "suggestion: the report gives no value); the unbiased KL I·D_KL.",
            std_scale=None, sequence_mask="off_policy", mask_threshold=0.5, kl_ratio_weighted=True, **_KL),
    _method("gspo", "GSPO", "zheng2025gspo",
            "Sequence ratio s_i = exp(mean_t log π/π_old) = (π_θ(o_i)/π_old(o_i))^(1/|o_i|), as the GSPO "
            "paper defines it (Table 1 prints it without the 1/|o_i| exponent), in GSPO-token form; clip "
            "3e-4 / 4e-4 (the GSPO paper's values, not the hidden-biases paper's); no KL.",
            ratio_level="sequence", clip_low=3e-4, clip_high=4e-4),
    _method("gtpo", "GTPO", "simoni2025gtpo",
            "No σ, no KL. λ = 2 on conflict tokens of positive completions, 0 on those of negative ones; "
            "δ_i drops completions whose mean entropy exceeds 0.7 (the authors' code); entropy term with "
            "γ = 0.1. Needs tokens and entropies.",
            std_scale=None, gtpo=True, gtpo_entropy_threshold=0.7, entropy_coef=0.1),
    _method("dapo", "DAPO", "yu2025dapo",
            "Token-level weights 1/Σ|o_j|, clip-higher 0.2 / 0.28, no KL (dynamic sampling is a data "
            "choice, outside the objective).",
            aggregation="token_mean", clip_high=0.28),
    _method("cppo", "CPPO", "lin2025cppo",
            "GRPO (R1) keeping only completions with |A_i|/σ(r) > γ = 0.5: γ acts on the σ-scaled "
            "advantage (r_i − mean)/(σ + 1e-4), GRPO's normalised advantage, which CPPO prunes on (Table 1's "
            "1{|A_i| > γ} reads as if on the centred A_i; the two differ by the factor σ). The authors' code "
            "prunes a fixed fraction of the completions with the smallest scaled |A| instead of a threshold.",
            adv_threshold=0.5, **_KL),
    _method("dr_grpo", "Dr GRPO", "liu2025drgrpo",
            "Constant α = 1/G: no length and no σ normalisation; clip 0.2, k3 KL as Table 1 lists it.",
            std_scale=None, aggregation="seq_mean_token_sum", **_KL),
    _method("gpg", "GPG", "chu2025gpg",
            "REINFORCE on log π, α̂ = B/(B−M) with M the tied groups (the GPG paper; verl counts nonzero "
            "rewards instead), F_norm = 1, token-level weights, no clip, no KL.",
            std_scale=None, gpg_alpha="nonzero_advantage", surrogate="log_prob", aggregation="token_mean",
            clip_low=None, clip_high=None),
    _method("cispo", "CISPO", "minimax2025m1",
            "sg[clip(I)] log π with no lower bound and the IS weight capped at 5 (the paper gives no "
            "value; TRL's recipe); M ≡ 1 as in MiniMax-M1 (token_mask='trust_region' gives their Eq. 7).",
            surrogate="is_weighted_log_prob", aggregation="token_mean", is_weight_high=5.0,
            clip_low=None, clip_high=None),
    _method("gcpo", "GCPO", "wu2025gcpo",
            "The exact sequence ratio s_i = π_θ(o_i|x)/π_old(o_i|x) carried to every token in stop-gradient "
            "form, sg[s_i]·π_θ/sg[π_θ]: the loss has the value of Table 1's row, Σ_t s_i A_i/(σG), but the "
            "gradient s_i A_i ∇log π_θ(o_i|x)/(σG), 1/|o_i| of that row's gradient. That is the gradient of "
            "one clipped term s_i A_i/(σG) per completion, GCPO's sequence-level importance weighting; the "
            "literal row would weight each completion's gradient by |o_i|. Constant α = 1/(σG), clip 0.2, "
            "no KL.",
            ratio_level="sequence_exact", aggregation="seq_mean_token_sum"),
    _method("ppo", "PPO", "schulman2017ppo",
            "The clipped surrogate without groups: A_i = r_i − batch mean, token-level weights, clip 0.2.",
            baseline="batch_mean", std_scale=None, aggregation="token_mean"),
    _from_trainer("grpo", "GRPO (TRL)", "vonwerra2020trl", "TRL's loss_type='grpo': α = 1/(N|o_i|), β = 0.",
                  Objective.from_trl(loss_type="grpo")),
    _from_trainer("bnpo", "BNPO (TRL)", "vonwerra2020trl", "TRL's loss_type='bnpo': α = 1/Σ|o_j|, β = 0.",
                  Objective.from_trl(loss_type="bnpo")),
    _from_trainer("sapo", "SAPO", "gao2025sapo",
                  "TRL's loss_type='sapo': soft gate (4/τ)σ(τ(s−1)), τ = 1.0 for A > 0 and 1.05 otherwise.",
                  Objective.from_trl(loss_type="sapo")),
    _from_trainer("gmpo", "GMPO", "zhao2025gmpo",
                  "verl's geo_mean: geometric mean of the token ratios, log-ratio clipped at ±0.4.",
                  Objective.from_verl(policy_loss="geo_mean", clip_ratio_low=0.4, clip_ratio_high=0.4)),
    _method("rloo", "RLOO", "ahmadian2024rloo",
            "REINFORCE on log π(o_i|x) with the leave-one-out baseline, α = 1/G per token (a sequence sum).",
            baseline="leave_one_out", std_scale=None, surrogate="log_prob", aggregation="seq_mean_token_sum",
            clip_low=None, clip_high=None),
    _method("reinforce_pp", "REINFORCE++", "hu2025reinforcepp",
            "Batch-whitened advantages (each completion weighted by its length), clip 0.2, token-level "
            "weights; the KL in the reward is left out (β = 0).",
            baseline="batch_whiten", std_scale=None, aggregation="token_mean"),
)

PRESETS: dict[str, Method] = {m.name: m for m in _METHODS}
"""Every preset by name: the ten of Table 1 (``TABLE1``), then the extras (``EXTRAS``)."""


def _preset_list() -> str:
    """The presets with their sources and choices, appended to this module's docstring (the API page)."""
    lines = ["", "Presets (name: method [bibtex key of the source]; what the preset chose):", ""]
    for method in _METHODS:
        lines.append(f"- ``{method.name}``: {method.label} [{method.source}]; {method.notes}")
    return "\n".join(lines)


__doc__ = (__doc__ or "") + _preset_list()


# --- Table 1, rendered from the fields ----------------------------------------------------------------
_DENOMINATORS = {
    "seq_mean_token_mean": ("G", "|o_i|", "{σ}"),
    "seq_mean": ("G", "|o_i|", "{σ}"),
    "token_mean": ("{σ}", "Σ|o_j|"),
    "token_sum": ("{σ}",),
    "seq_mean_token_sum": ("{σ}", "G"),
    "constant": ("{σ}", "G", "L"),
}


def alpha_text(obj: Objective) -> str:
    """α_{i,t} as Table 1 writes it: σ(r) folded in, masks, GPG's α̂ and GTPO's δλ as factors."""
    sigma = {"group": "σ(r)", "batch": "σ_batch", None: ""}[obj.std_scale]
    denominator = [sigma if d == "{σ}" else d for d in _DENOMINATORS[obj.aggregation]]
    denominator = [d for d in denominator if d]
    factors = [f for f, on in (("α̂", obj.gpg_alpha), ("δ_i λ_{i,t}", obj.gtpo),
                               ("M_{i,t}", obj.sequence_mask or obj.token_mask)) if on]
    text = " ".join(factors) or "1"
    if denominator:
        text += "/" + (denominator[0] if len(denominator) == 1 else f"({'·'.join(denominator)})")
    if obj.adv_threshold is not None:  # CPPO's γ acts on the advantage after the division by σ
        scaled = "|A_i|" if not sigma else f"|A_i|/{sigma}"
        text += f" · 1{{{scaled} > {obj.adv_threshold:g}}}"
    return text


def ratio_text(obj: Objective) -> str:
    """s_{i,t} of Eq. 3 and the surrogate around it."""
    level = {"token": "I", "sequence": "sg[s_i/π_θ]·π_θ, s_i = (π_θ(o_i)/π_old(o_i))^(1/|o_i|)",
             "sequence_exact": "sg[s_i/π_θ]·π_θ, s_i = π_θ(o_i)/π_old(o_i)"}[obj.ratio_level]
    if obj.surrogate == "log_prob":
        return "log π_θ"
    if obj.surrogate == "is_weighted_log_prob":
        return f"sg[clip({level})]·log π_θ"
    if obj.surrogate == "soft_gate":
        return f"soft gate (4/τ)σ(τ({level} − 1))"
    if obj.surrogate == "geometric_mean":
        return "(Π_t I_t)^(1/|o_i|), clipped in log space"
    return level


def regulariser_text(obj: Objective) -> str:
    """R(θ) and its coefficient ('×' when there is none, as Table 1 prints it)."""
    parts = []
    if obj.beta and obj.kl:
        estimator = {"k1": "k1", "k2": "k2", "k3": "D_KL", "abs": "|k1|"}[obj.kl]
        parts.append(f"{'I·' if obj.kl_ratio_weighted else ''}{estimator} (β = {obj.beta:g})")
    if obj.entropy_coef:
        parts.append(f"entropy ⟨H⟩_i term (γ = {obj.entropy_coef:g})")
    return " + ".join(parts) or "×"


def advantage_text(obj: Objective) -> str:
    """The advantage estimator (Eq. 2 and its variants)."""
    base = {"group_mean": "r_i − mean_G(r)", "leave_one_out": "r_i − mean of the others",
            "batch_whiten": "whitened over the batch", "batch_mean": "r_i − mean_batch(r)",
            "none": "r_i"}[obj.baseline]
    return base


def clip_text(obj: Objective) -> str:
    """The clip range (or its analogue) of the surrogate."""
    if obj.surrogate in ("log_prob", "soft_gate"):
        return "–"
    if obj.surrogate == "is_weighted_log_prob":
        low = "0" if obj.is_weight_low is None else f"{obj.is_weight_low:g}"
        high = "∞" if obj.is_weight_high is None else f"{obj.is_weight_high:g}"
        return f"IS weight in [{low}, {high}]"
    if obj.surrogate == "geometric_mean":
        return f"log-ratio in [−{obj.clip_low:g}, {obj.clip_high:g}]"
    low = "–" if obj.clip_low is None else f"{obj.clip_low:g}"
    high = "–" if obj.clip_high is None else f"{obj.clip_high:g}"
    text = low if low == high else f"{low} / {high}"
    if obj.dual_clip is not None:
        text += f", dual {obj.dual_clip:g}"
    return text


COLUMNS = ("method", "α_{i,t}", "s_{i,t}", "R(θ)", "advantage", "ε", "source")


def table_rows(which: str = "table1") -> list[dict[str, str]]:
    """One dict per preset (keys: ``COLUMNS``); ``which`` is "table1", "extras" or "all"."""
    names = {"table1": TABLE1, "extras": EXTRAS, "all": TABLE1 + EXTRAS}.get(which)
    if names is None:
        raise ValueError(f"which must be 'table1', 'extras' or 'all', got {which!r}")
    rows = []
    for name in names:
        method = PRESETS[name]
        obj = method.objective
        rows.append(dict(zip(COLUMNS, (method.label, alpha_text(obj), ratio_text(obj), regulariser_text(obj),
                                       advantage_text(obj), clip_text(obj), method.source), strict=True)))
    return rows


def methods_table(which: str = "table1", fmt: str = "markdown") -> str:
    """Table 1 rendered from the presets, as "markdown" or "html" (``which``: table1 / extras / all)."""
    rows = table_rows(which)
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
        return "\n".join(lines)
    if fmt == "html":
        import html

        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in COLUMNS) + "</tr>"
                       for r in rows)
        return f'<table class="companion-table1"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    raise ValueError(f"fmt must be 'markdown' or 'html', got {fmt!r}")

