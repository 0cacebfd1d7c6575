"""Bridges from `companion` to real trainers. Each module imports its library only when it is imported.

- ``companion.integrations.trl``: a TRL 1.16 ``GRPOTrainer`` that optimises any ``cp.Objective``, and a
  ``TrainerCallback`` that logs the book's diagnostics every step (extra ``companion[trl]``).
- ``companion.integrations.verl``: a ``cp.Objective`` as a verl 0.9.1 policy loss
  (``register_policy_loss``); verl itself is installed separately (it is not an extra).
- ``companion.integrations.diagnostics``: the diagnostics themselves, from plain tensors (no library).

``import companion`` never imports these modules; importing one without its library raises an error that
names what to install.
"""
