"""``sage bench``: the step cost of ERM, SAM and SAGE on one model, measured in one process (App. G's claim
that a SAGE step costs about a SAM step, checked on the user's own machine)."""
