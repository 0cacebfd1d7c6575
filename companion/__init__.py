"""companion: the executable companion to *On the Hidden Objective Biases of Group-based RL*.

Fontana, Simoni, Rossolini, Saracino, Mori (arXiv 2601.05002, ACL 2026). Typical use::

    import companion as cp
    obj = cp.Objective.preset("dr_grpo")
    out = obj.loss(logprobs, old_logprobs, obj.advantages(rewards, group_size=8), mask)

Names are imported lazily (PEP 562), so `import companion` stays cheap: the objective and the optimizer
never pull in transformers or matplotlib.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it. Each module owns one block.
_EXPORTS: dict[str, str] = {
    # objective.py, methods.py, prefix.py: Eq. 1-3, Table 1, Prop 1
    "Objective": "objective",
    "LossOutput": "objective",
    "PRESETS": "methods",
    "methods_table": "methods",
    # optim.py, theory.py: Props 2, 3, 7
    "InstrumentedAdamW": "optim",
    # lab.py, policies.py, tasks.py
    "TabularPolicy": "policies",
    "GRUPolicy": "policies",
    "TinyGPT2Policy": "policies",
    "StackedGPT2Policy": "gpt2",
    "Task": "tasks",
    "make_task": "tasks",
}

_SUBMODULES = ("objective", "methods", "prefix", "optim", "theory", "policies", "tasks", "lab", "viz",
               "exercises", "trainers", "notebook", "audit", "gpt2", "sft", "r1zero")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"companion.{_EXPORTS[name]}"), name)
    if name in _SUBMODULES:
        return import_module(f"companion.{name}")
    raise AttributeError(f"module 'companion' has no attribute {name!r}")
