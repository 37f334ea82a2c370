"""The valid range of every numeric option (and the values of an option that takes one of a few), checked
as soon as a command's config is composed, before any data is read or MLflow run opened: a value out of
range is one line naming the option, its value and the range. Imports only OmegaConf, so the check costs
nothing at start-up.

A table rather than typed (structured) configs: OmegaConf's types have no ranges, so a schema per
config group would still need these bounds written out, and would fix every group's keys, where
`+trainer.<name>=...` and users' own configs add any key.
"""
from dataclasses import dataclass, field

from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.errors import ConfigError, typed


def among(value, allowed) -> bool:
    """Whether `value` is one of `allowed`, of its type too: 1 is not true, nor 0 false."""
    return any(value == option and type(value) is type(option) for option in allowed)


def described(values: dict) -> str:
    """Values as a user types them, each with what it means: `-1 (no limit), null (every image)`."""
    return ", ".join(f"{typed(value)} ({meaning})" for value, meaning in values.items())


@dataclass(frozen=True)
class Choices:
    """The values of an option that takes one of a few and no number: {value: what it means}."""
    values: dict

    def __contains__(self, value) -> bool:
        return among(value, self.values)

    def __str__(self) -> str:
        return f"one of {described(self.values)}"


@dataclass(frozen=True)
class Range:
    low: float | None = None      # None: no bound
    high: float | None = None
    low_open: bool = False        # the bound itself excluded
    high_open: bool = False
    integer: bool = False
    also: dict = field(default_factory=dict)  # values allowed besides the range: {value: what it means}

    def __contains__(self, value) -> bool:
        if among(value, self.also):
            return True
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        return ((self.low is None or value > self.low or (value == self.low and not self.low_open))
                and (self.high is None or value < self.high or (value == self.high and not self.high_open)))

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '≥'} {self.low}"
        else:
            text = kind
        return f"{text}, or {described(self.also)}" if self.also else text


COUNT = Range(1, integer=True)
POSITIVE = Range(0, low_open=True)
SHARE = Range(0, 1, high_open=True)  # of rows held out: 0 holds out none

# option -> its range; the options a command's config lacks are skipped, a list's items checked each
RANGES = {
    "seed": Range(0, 2**32 - 1, integer=True),  # Lightning would silently pick a random seed outside it
    "trainer.max_epochs": COUNT,
    "trainer.max_steps": Range(1, integer=True, also={-1: "no limit"}),
    "trainer.check_val_every_n_epoch": Range(1, integer=True, also={None: "by steps only"}),
    "trainer.log_every_n_steps": COUNT,
    "trainer.num_nodes": COUNT,
    "trainer.num_sanity_val_steps": Range(0, integer=True, also={-1: "all"}),
    # Lightning takes any other value for true, but without torch's deterministic algorithms
    "trainer.deterministic": Choices({True: "deterministic algorithms only: an error where an operation has none",
                                      "warn": "deterministic algorithms where there are, a warning where not",
                                      False: "torch's fastest algorithms", None: "torch's setting as it is"}),
    # null by default, so a text given is not checked against a number (cli.check_override_types): a TypeError
    # traceback at the first epoch's end, the run FAILED
    "trainer.callbacks.stop_on_divergence.divergence_threshold": Range(also={None: "no threshold"}),
    "trainer.callbacks.last_checkpoint.interval": Range(0),  # seconds; 0: at every epoch's end
    "tracking.server_wait": Range(0),  # seconds; 0: no wait for a lost tracking server
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": Range(0),
    "optimizer.momentum": Range(0, 1, high_open=True),
    "scheduler.max_lr": POSITIVE,
    "scheduler.pct_start": Range(0, 1, low_open=True, high_open=True),
    "scheduler.div_factor": POSITIVE,  # one-cycle's: torch divides by them
    "scheduler.final_div_factor": POSITIVE,
    "model.hidden_sizes": COUNT,
    "model.init_std": POSITIVE,
    "metrics.accuracy.threshold": Range(also={None: "by the loss: 0 on logits, else 0.5"}),
    "data.batch_size": COUNT,
    "data.n_points": COUNT,
    "data.radius": POSITIVE,
    "data.val_fraction": SHARE,
    "data.test_fraction": SHARE,
    "data.val_size": Range(0),  # a share below 1, or a count (images.py)
    "data.limit": Range(1, integer=True, also={None: "every image"}),
    "data.index_range": Range(0, integer=True, also={None: "every image"}),
    "data.std": POSITIVE,
    # a sweep's sweeper and launcher (checked when the sweep starts)
    "hydra.sweeper.n_trials": COUNT,  # hparams_search=...: Optuna's best of no trials is a traceback
    "hydra.sweeper.n_jobs": COUNT,    # trials asked at a time: none is a ZeroDivisionError in the sweeper
    # jobs handed to the launcher at a time (Hydra's BasicSweeper): none is a bare AssertionError in the sweeper
    "hydra.sweeper.max_batch_size": Range(1, integer=True, also={None: "every job at once"}),
    "hydra.launcher.n_jobs": Range(1, integer=True, also={-1: "one per CPU core"}),  # hydra/launcher=parallel
    "hydra.launcher.max_group_size": Range(1, integer=True, also={None: "as many as the memory allows"}),
    "hydra.launcher.memory_budget_mb": Range(0, low_open=True, also={None: "a share of the free memory"}),
    "hydra.launcher.memory_fraction": Range(0, 1, low_open=True),
    "batch_size": COUNT,  # experiments.predict
    "tolerance.accuracy": Range(0),  # experiments.reproduce
    "tolerance.mse": Range(0),
}


# the options that are lists (or null where their range allows it): a number there was a TypeError in the build
LISTS = ("model.hidden_sizes", "data.index_range")


def check_ranges(config: DictConfig) -> None:
    """Raise ConfigError naming the first option of `config` whose value is out of its range."""
    for key, valid in RANGES.items():
        value = OmegaConf.select(config, key, default=KeyError, throw_on_missing=False)
        if value is KeyError:
            continue
        if key in LISTS and not isinstance(value, ListConfig) and value is not None:
            raise ConfigError(f"{key}={value} is out of range: expected a list, each item {valid}")
        if isinstance(value, ListConfig):
            if not all(item in valid for item in value):
                raise ConfigError(f"{key}={OmegaConf.to_container(value)} is out of range: expected each item "
                                  f"to be {valid}")
        elif value not in valid:
            raise ConfigError(f"{key}={typed(value)} is out of range: expected {valid}")
