"""Config-driven neural-network experiments."""
from omegaconf import OmegaConf

# `${libraries_console_level:${hydra.verbose}}` in conf/config.yaml: the level of the libraries' lines that
# reach the console: warnings and errors, or everything when Hydra is verbose (true, or a list of loggers).
OmegaConf.register_new_resolver("libraries_console_level", lambda verbose: "NOTSET" if verbose else "WARNING",
                                replace=True)
