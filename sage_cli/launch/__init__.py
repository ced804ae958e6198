"""Sweeps: plan (recipe × axes → jobs), launch (local pool or SLURM), follow (status, cancel, logs)."""
