"""hydra/sweeper=compose_once, the default sweeper of `-m` (see sweeper.py)."""
