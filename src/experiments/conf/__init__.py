"""Hydra config groups of `python -m experiments` (read as the package experiments.conf)."""
