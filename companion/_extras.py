"""Optional dependencies: one clear error that names the extra to install.

``companion`` needs only torch and numpy. The rest comes in extras (pyproject's
``[project.optional-dependencies]``)::

    lab  transformers, tokenizers, tqdm     (TinyGPT2Policy, its tokenizer)
    viz  matplotlib, ipywidgets             (companion.viz, the explorers)
    trl  trl, accelerate, datasets          (companion.integrations.trl)
    audit  pyyaml                           (YAML configurations in companion.audit)

``require("lab", "transformers")`` returns nothing when the modules import, and raises
:class:`MissingExtraError` (a ``ModuleNotFoundError``) saying ``pip install "companion[lab]"`` when one
does not.
"""

from __future__ import annotations

from importlib import import_module

EXTRAS: dict[str, tuple[str, ...]] = {
    "lab": ("transformers", "tokenizers", "tqdm"),
    "viz": ("matplotlib", "ipywidgets"),
    "trl": ("trl", "accelerate", "datasets"),
    "audit": ("yaml",),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is missing; the message names the extra that brings it."""


def require(extra: str, *modules: str, feature: str = "") -> None:
    """Import ``modules`` (default: every module of ``extra``) or raise MissingExtraError naming the extra."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {sorted(EXTRAS)}")
    for module in modules or EXTRAS[extra]:
        try:
            import_module(module)
        except ModuleNotFoundError as error:
            what = feature or f"this part of companion ({extra})"
            raise MissingExtraError(
                f"{what} needs {module!r}, which is not installed: pip install \"companion[{extra}]\"",
                name=module,
            ) from error
