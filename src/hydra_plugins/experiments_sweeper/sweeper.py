"""hydra/sweeper=compose_once: Hydra's basic sweeper, composing each job's config once.

Hydra's basic sweeper composes every job's config before it launches any, to refuse a sweep that
cannot be composed (a misspelt option of one job) before a job runs; its launcher then composes each
job's config again. Composing our config takes about 0.1 s here, of a tiny sweep's 0.5 s a job
(scripts/benchmark.py --rows sweep-job). This sweeper keeps the configs it composed to check
the sweep and hands each to the launcher, which composes only the jobs it was not given: all of them
when its jobs run in other processes (joblib, submitit), where the configs would have to be sent.

Only Hydra is imported here: Hydra imports every plugin for every command, `--help` included.
"""
from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# The launchers that compose each job's config in this process, by their _target_ (Hydra's plugin scan runs a
# plugin's module again, making its classes anew)
LAUNCHERS_COMPOSING_HERE = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                            "hydra_plugins.experiments_vectorized_launcher.vectorized_launcher.VectorizedLauncher")
KEPT_AT_MOST = 1000  # configs kept between the check and the launch: about 0.2 MiB each


class ComposedOnce(ConfigLoader):
    """Hydra's config loader, handing out the job configs composed ahead of time, each once."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.ahead: dict[tuple[str, ...], list[DictConfig]] = {}  # a job's overrides: its configs (a job may repeat)

    def __getstate__(self) -> dict:
        return {**vars(self), "ahead": {}}  # a launcher pickling its context for each job sends no configs

    def compose_ahead(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> None:
        config = self.loader.load_sweep_config(master_config, list(sweep_overrides))  # raises for a bad job
        if sum(map(len, self.ahead.values())) < KEPT_AT_MOST:
            self.ahead.setdefault(tuple(sweep_overrides), []).append(config)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        composed = self.ahead.get(tuple(sweep_overrides))
        if composed:
            return composed.pop(0)
        return self.loader.load_sweep_config(master_config, sweep_overrides)

    def load_configuration(self, *args, **kwargs):
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self):
        return self.loader.get_search_path()

    def get_sources(self):
        return self.loader.get_sources()

    def list_groups(self, parent_name: str):
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args, **kwargs):
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args, **kwargs):
        return self.loader.compute_defaults_list(*args, **kwargs)


class ComposeOnceSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.composed = ComposedOnce(hydra_context.config_loader)
        super().setup(hydra_context=HydraContext(config_loader=self.composed, callbacks=hydra_context.callbacks),
                      task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if self.config.hydra.launcher._target_ not in LAUNCHERS_COMPOSING_HERE:
            return super().validate_batch_is_legal(batch)
        for overrides in batch:
            self.composed.compose_ahead(self.config, overrides)
