"""DG objectives, one short module each; their settings and registration in ``sage_cli/settings/objectives.py``.

An objective turns one step's per-env batches into the K per-env losses the optimizer sees. All envs go
through one forward over their concatenation (Alg. 1, line 4). A penalty shared by all envs (VREx's
variance, CORAL's covariance gaps, …) is added to every env's loss, so the weighted mean of the K losses is
the objective's total loss and any optimizer (Adam, SAM, SAGE, …) can minimise it.
"""

from ..settings.objectives import OBJECTIVES  # noqa: E402,F401  (torch-free)
