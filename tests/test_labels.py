"""Equation labels against the paper's own numbering.

The paper's equation index (Eqs. 1–38, Props. 1–7, checked against its text; ../shared/PAPER.md) is
encoded below as data. Three checks:

- every "Eq. N", "Eqs. N–M", "Prop. N" in the package, the pages and the chapters names an equation that
  exists;
- the equation → code page (book/equations.md) has one row per number, and each row says what the index
  says (keywords per equation) and not what a neighbouring equation says;
- the mislabels and misstatements found in an audit (issue 8) do not come back. Each pattern carries the
  text it was written against, and the test checks that it still catches that text.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]

# number: what the paper's index says it is, and the words its row on book/equations.md must contain
EQUATIONS = {
    1: ("the unified objective J(θ)", ["unified"]),
    2: ("the group-centred advantage", ["advantage"]),
    3: ("the ratio s_{i,t}", ["ratio"]),
    4: ("the AdamW update (+ξλθ printed; −ξλθ meant)", ["AdamW update"]),
    5: ("the first moment, printed as a recursion that is not Adam's", ["first moment"]),
    6: ("the second moment, likewise", ["second moment"]),
    7: ("App. A: J with effective weights ω and token ratios ρ, the general form", ["general form"]),
    8: ("App. A.1: J_align at the first inner step (ρ = 1)", ["first inner step", "J_{align}"]),
    9: ("Case 1: length-normalised weights, J = −βE[R]", ["length-normalised"]),
    10: ("Case 2: constant per-token weights, C Σ A_i |o_i|", ["constant"]),
    11: ("Case 3: general weights, ∝ Cov(A, Ω)", ["Cov"]),
    12: ("App. B.1: s := k·π_θ", ["s := k"]),
    13: ("the gradient through the min", [r"\min"]),
    14: ("∇s = s ∇log π", [r"\nabla s = s"]),
    15: ("the gradient of J", [r"\nabla J"]),
    16: ("App. B.2: the prefix / deviation split of Eq. 15", ["prefix", "deviation"]),
    17: ("shared tokens have identical ∇log π", ["identical"]),
    18: ("ω_{i,t} := α_{i,t} s_{i,t}", [r"\omega_{i,t} :="]),
    19: ("Prop. 5: A*_i = φ A_i", [r"A^*_i = \varphi A_i"]),
    20: ("the last line of Prop. 5's proof", ["Prop. 5's proof"]),
    21: ("g_A, the advantage part of the gradient", ["g_A"]),
    22: ("g_R = β∇R", ["g_R"]),
    23: ("g*_A = φ g_A", [r"g^*_A = \varphi\, g_A"]),
    24: ("Prop. 6: m* = φm and v* = φ²v", [r"m^* = \varphi m", r"v^* = \varphi^2 v"]),
    25: ("the induction step of Prop. 6's proof for m", ["induction", "for $m$"]),
    26: ("the induction step of Prop. 6's proof for v", ["induction", "for $v$"]),
    27: ("the limit ε/(φ√v̂) → 0: Δθ* = Δθ", [r"\to 0"]),
    28: ("App. D.1: the piecewise gradient", ["piecewise"]),
    29: ("Prop. 7's proof: the Adam step driven by momentum alone", ["momentum alone"]),
    30: ("m̂_T, v̂_T right after clipping (k = 0)", ["right after clipping"]),
    31: ("C_T defined", ["$C_T$ defined"]),
    32: ("C_T's closed form", ["closed form of $C_T$"]),
    33: ("lim C_T = β1/√β2", [r"\beta_1/\sqrt{\beta_2}"]),
    34: ("m_{T+k} = β1^{k+1} m_{T−1}, v_{T+k} = β2^{k+1} v_{T−1}", [r"\beta_1^{k+1} m_{T-1}"]),
    35: ("C_{T,k} defined", ["$C_{T,k}$ defined"]),
    36: ("C_{T,k}'s closed form", ["closed form of $C_{T,k}$"]),
    37: ("the large-T form (β1/√β2)^{k+1}", ["large $T$", r"(\beta_1/\sqrt{\beta_2})^{k+1}"]),
    38: ("the ε factor (√v̂_{T−1}+ε)/(√v̂_{T+k}+ε)", [r"(\sqrt{\hat v_{T-1}}+\varepsilon)"]),
}
PROPOSITIONS = {
    1: ("non-uniform ω biases shared prefixes (App. B)", ["shared prefix"]),
    2: ("AdamW is insensitive to the reward scale at β = 0 (App. C)", ["reward scale"]),
    3: ("momentum moves the policy past the clipping region (App. D)", ["momentum"]),
    4: ("the surrogate value is not a performance proxy (App. A)", ["not a performance proxy"]),
    5: ("A* = φA (App. C)", [r"A^* = \varphi A"]),
    6: ("m* = φm, v* = φ²v (App. C)", [r"m^* = \varphi m"]),
    7: ("Prop. 3 restated in App. D; the counting follows its proof", ["Prop. 3 restated"]),
}
# what a row must not say: the neighbouring equation's content, as the page once had it
ROW_FORBIDDEN = {
    7: ["first inner step", "$s = 1$"],
    8: ["per-completion total weight"],
    17: ["W_{agg}", r"C \sum"],
    18: ["W_{agg}"],
    23: ["m^*"],
    27: [r"the step $\hat m"],
    29: [r"\beta_1^{k+1}"],
    30: [r"\beta_2^{k+1}"],
    32: ["defined"],
    35: ["derivation"],
    36: ["defined", "after $k$ more steps"],
}

# (pattern, what is wrong, the text it was written against)
KNOWN_MISLABELS = [
    (r"(?i)w_\{?agg\b[^.\n|]{0,80}\bEqs?\.\s?1[78]\b|\bEqs?\.\s?1[78]\b[^.\n|]{0,80}\bw_\{?agg",
     "W_agg is App. B.2's unnumbered Case 2 (Prop. 1), not Eq. 17 or 18",
     "advantage_sum: float  # Σ_{i ∈ members} A_i (Eq. 17: W_agg = C · this for constant ω)"),
    (r"(?i)w_agg:[^\n]*\(Eq\.\s?1[78]\)",
     "W_agg is App. B.2's unnumbered Case 2 (Prop. 1), not Eq. 17 or 18",
     "w_agg: float  # Σ_{i ∈ members} ω_{i,t} A_i (Eq. 18)"),
    (r"\| Eq\. 1[78] \|[^|\n]*W_\{agg\}",
     "the equation page gave W_agg the number 17 or 18",
     r"| Eq. 18 | general $\omega$: $W_{agg} = \sum_i \omega_i A_i$ | `node.w_agg` |"),
    (r"Eqs?\.\s?16[–-]18\)\s*\n\s*\n?\s*W_agg",
     "the prefix-restricted gradient is unnumbered (App. B.2), after Eqs. 16-18",
     "same term ∇log π(y_t | prefix) appears once per completion, so the node receives (Eq. 16–18)\n\n"
     "    W_agg(node) ∇log π(y_t | prefix)"),
    (r"Eq\.\s?36\W{0,3}C_\{T,k\} = ‖|C_\{T,k\} = ‖u_\{T\+k\}‖ / ‖u_\{T−1\}‖[^()\n]*\(Eq\.\s?36\)",
     "C_{T,k} = ‖u_{T+k}‖/‖u_{T−1}‖ is defined in Eq. 35; Eq. 36 is its closed form",
     '"""Eq. 36: C_{T,k} = ‖u_{T+k}‖ / ‖u_{T−1}‖; exact for ε = 0."""'),
    (r"Eq\.\s?3[23]\W{0,3}C_T = ‖",
     "C_T = ‖u_T‖/‖u_{T−1}‖ is defined in Eq. 31; Eq. 32 is its closed form",
     '"""Eq. 32: C_T = ‖u_T‖ / ‖u_{T−1}‖ = [β1 (1−β1^{T−1})/(1−β1^T)]"""'),
    (r"\(1 \+ ε/\(φ√v̂\)\)\)?[^()\n]{0,60}\(Eq\.\s?27\)",
     "the step m̂/(√v̂(1 + ε/(φ√v̂))) is the unnumbered display before Eq. 27 (Eq. 27 is its limit)",
     "the Adam step would be m̂ / (√v̂ (1 + ε/(φ√v̂))) (Eq. 27): it is invariant to φ"),
    (r"\| Eq\. 7 \|[^|\n]*first inner step|Eq\.\s?7\b[^.\n]{0,40}first inner step",
     "the first inner step (s = 1) is Eq. 8; Eq. 7 is the general form",
     "| Eq. 7 | App. A: the surrogate at the first inner step ($s = 1$), leading to Eqs. 9–11 |"),
    (r"Prop\.\s?3\b[^.]{0,60}\bcounts?\b",
     "Prop. 3 states the drift; App. D counts it after Prop. 7 (Eqs. 30-38)",
     "(Prop. 3 of\n  the paper counts that drift; a later chapter measures it)"),
]
KNOWN_MISSTATEMENTS = [
    (r"preset\(\"grpo\"\)`?,\s*TRL's\s+default",
     "TRL 1.16's default loss_type is 'dapo' (token mean), not 'grpo'",
     '(`cp.Objective.preset("grpo")`, TRL\'s default) also divides each completion\'s'),
    (r"GRPO\s+you\s+get\s+from\s+a\s+library\s+also\s+weights",
     "library defaults (TRL's dapo, verl's token-mean) do not weight by 1/|o_i|",
     "The GRPO you get from a library also weights\n  tokens by $1/|o_i|$"),
    (r"one objective\*\*\s+with\s+four\s+settings",
     "the paper names three components (α, s, R); the advantage as a fourth setting is the book's",
     "show that all ten are **one objective** with four\nsettings: the per-token weights"),
    (r"uses\s+the\s+paper's\s+\$\\varepsilon\s*=\s*3",
     "GSPO's ε = 3e-4 / 4e-4 are the GSPO paper's values",
     r"GSPO's preset uses the paper's $\varepsilon = 3\cdot10^{-4}$ /"),
]

LABEL = re.compile(r"(?P<kind>\bEqs?|\bProps?)\.?[ \u00a0]?(?P<numbers>\d+(?:\s*(?:[–-]|,|/|\+|and)\s*\d+)*)")
OTHER_PAPER = re.compile(r"(their|[’']s)\s*$")  # "MiniMax-M1's Eq. 7" is not the paper's Eq. 7


def checked_files(root: Path = ROOT) -> list[Path]:
    return sorted([*(root / "companion").glob("*.py"), *(root / "book").glob("*.md"),
                   *(root / "book").glob("*.ipynb"), root / "README.md", root / "CONTRIBUTING.md"])


def text_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        return "\n\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
    return path.read_text()


def labels(text: str) -> list[tuple[str, int, str]]:
    """(kind "Eq" or "Prop", number, the label as written) for every label naming the paper's equations."""
    found = []
    for match in LABEL.finditer(text):
        if OTHER_PAPER.search(text[max(0, match.start() - 12):match.start()]):
            continue
        kind = "Eq" if match["kind"].startswith("Eq") else "Prop"
        parts = re.split(r"\s*(?:,|/|\+|and)\s*", match["numbers"])
        for part in parts:
            ends = [int(n) for n in re.split(r"\s*[–-]\s*", part)]
            numbers = range(ends[0], ends[-1] + 1) if len(ends) == 2 and ends[0] < ends[1] else ends
            found += [(kind, n, match.group(0)) for n in numbers]
    return found


def bad_labels(text: str) -> list[str]:
    wrong = []
    for kind, number, written in labels(text):
        known = EQUATIONS if kind == "Eq" else PROPOSITIONS
        if number not in known:
            wrong.append(f"{written!r}: the paper has no {kind}. {number}")
    return wrong


def page_rows(text: str) -> dict[tuple[str, int | str], str]:
    """('Eq', N) / ('Prop', N) / ('unnumbered', place) -> the 'what it is' cell of the equation page."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| (Eq|Prop)\. (\d+) \| (.*?) \|", line)
        if match:
            key = (match[1], int(match[2]))
            assert key not in rows, f"two rows for {match[1]}. {match[2]}"
            rows[key] = match[3]
        elif line.startswith("| unnumbered |"):
            rows[("unnumbered", len(rows))] = line.split("|")[2]
    return rows


def page_problems(text: str) -> list[str]:
    rows, problems = page_rows(text), []
    for kind, index in (("Eq", EQUATIONS), ("Prop", PROPOSITIONS)):
        for number, (meaning, keywords) in index.items():
            row = rows.get((kind, number))
            if row is None:
                problems.append(f"no row for {kind}. {number} ({meaning})")
                continue
            problems += [f"{kind}. {number} ({meaning}): the row lacks {k!r}: {row}" for k in keywords
                         if k not in row]
            if kind == "Eq":
                problems += [f"Eq. {number} ({meaning}): the row says {k!r}, which is another equation's"
                             for k in ROW_FORBIDDEN.get(number, []) if k in row]
    unnumbered = [row for key, row in rows.items() if key[0] == "unnumbered"]
    if not any("W_{agg}" in row for row in unnumbered):
        problems.append("W_agg (App. B.2, Case 2) needs its own 'unnumbered' row")
    return problems


def known_mistakes(text: str) -> list[str]:
    return [f"{why}: {m.group(0)!r}" for pattern, why, _ in KNOWN_MISLABELS + KNOWN_MISSTATEMENTS
            for m in re.finditer(pattern, text)]


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_label_names_an_equation_of_the_paper(path: Path):
    assert bad_labels(text_of(path)) == []


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_known_mislabels_and_misstatements_do_not_come_back(path: Path):
    assert known_mistakes(text_of(path)) == []


def test_the_equation_page_describes_each_number_as_the_paper_does():
    assert page_problems((ROOT / "book" / "equations.md").read_text()) == []


def test_the_index_is_complete():
    assert sorted(EQUATIONS) == list(range(1, 39)) and sorted(PROPOSITIONS) == list(range(1, 8))


@pytest.mark.parametrize(("pattern", "why", "old_text"), KNOWN_MISLABELS + KNOWN_MISSTATEMENTS,
                         ids=[f"guard{i}" for i in range(len(KNOWN_MISLABELS + KNOWN_MISSTATEMENTS))])
def test_each_guard_catches_the_text_it_was_written_against(pattern: str, why: str, old_text: str):
    assert re.search(pattern, old_text), why


def test_the_label_reader():
    text = ("Eq. 1, Eqs. 9–11, Eq. 27, 31-38, Eq. 36 + 38, Props. 2, 3 and 7, Prop 3/7, "
            "MiniMax-M1's Eq. 7, Eq. 39, Prop. 8")
    found = {(kind, n) for kind, n, _ in labels(text)}
    assert {("Eq", n) for n in (1, 9, 10, 11, 27, 31, 35, 38, 36, 39)} <= found
    assert {("Prop", n) for n in (2, 3, 7, 8)} <= found
    assert len(bad_labels(text)) == 2  # Eq. 39 and Prop. 8; the other paper's Eq. 7 is not read
    old_row = "| Eq. 17 | constant $\\omega$: $C \\sum A_i$ | x | y |"
    rows = page_rows(old_row + "\n| Prop. 1 | shared prefix | x | y |")
    assert rows == {("Eq", 17): "constant $\\omega$: $C \\sum A_i$", ("Prop", 1): "shared prefix"}
    problems = page_problems(old_row)
    assert any("Eq. 17" in p and "identical" in p for p in problems)
    assert any("Eq. 17" in p and "another equation's" in p for p in problems)
