"""Config-driven neural-network experiments."""
import sys

from omegaconf import OmegaConf

# `${terminal:}` in the configs: true when a person watches stderr (a progress bar is then welcome),
# false in CI logs, pipes and files.
OmegaConf.register_new_resolver("terminal", lambda: sys.stderr.isatty(), replace=True)
