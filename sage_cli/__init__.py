"""sage: run, schedule and report SAGE experiments (arXiv 2605.07914)."""

__version__ = "0.1.0"
