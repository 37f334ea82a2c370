"""hydra/launcher=vectorized (see vectorized_launcher.py)."""
