"""hydra/launcher=vectorized: a sweep's jobs that can train together train as one program.

Hydra finds this launcher in the `hydra_plugins` namespace package; its options are documented in
`experiments/conf/hydra/launcher/vectorized.yaml`. It composes each job's config as Hydra's basic
launcher does, builds each job as a single run would (experiments.vectorized), groups those that
differ only in seed, initialisation and optimizer numbers, trains each group vectorised and then
records every job of it through Hydra's `run_job` (its output folder, logs, callbacks, its own
MLflow child run, the objective it returns). Every other job runs the ordinary way, through the
app. One line says which jobs were grouped and why the rest were not. A job that fails, in a group
or alone, fails only itself: the launcher goes on with the others. A signal (SIGINT, SIGTERM) while
a group trains or its jobs are recorded ends each of its jobs' runs that is not complete (a job recorded
before it keeps its run) KILLED with the epochs it completed, then the command.

Only Hydra is imported here: Hydra imports every plugin for every command, `--help` included.
"""
import gc
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class VectorizedLauncher(Launcher):
    def __init__(self, max_group_size: int | None = None, memory_budget_mb: float | None = None,
                 memory_fraction: float = 0.5) -> None:
        self.max_group_size, self.memory_budget_mb, self.memory_fraction = (
            max_group_size, memory_budget_mb, memory_fraction)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from experiments import drawing
        from experiments.cli import heavy_import
        from experiments.errors import Stopped, stops_kept

        drawing.start()  # the jobs' plots drawn beside them, by a worker started before the heavy imports (drawing.py)
        vectorized = heavy_import("experiments.vectorized")  # torch and Lightning load only when a sweep runs

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [vectorized.Job(index, self._compose(index, overrides))
                for index, overrides in enumerate(job_overrides, initial_job_idx)]
        trainers = {}
        for job in jobs:
            vectorized.prepare(job, trainers)
        groups, alone, line = vectorized.plan(jobs, self.max_group_size, self.memory_budget_mb,
                                              self.memory_fraction)
        log.info(line)
        returns: dict[int, JobReturn] = {}
        while groups:
            group = groups.pop(0)
            # The last group's tensors go before this one's are made. After a failure, reference cycles hold them until
            # the garbage collector runs (accelerate's find_executable_batch_size collects after running out of memory
            # too): without this, the halves of a group that ran out of memory ran out as well.
            training = None
            gc.collect()
            try:
                training = vectorized.Group(group)
                try:
                    with stops_kept():
                        trained = training.train()
                except Stopped:  # SIGINT, SIGTERM: each job's run KILLED with the epochs it trained, then the exit
                    vectorized.record_stopped(training)
                    raise
            except Exception as error:  # noqa: BLE001 - the jobs still run: in halves, or the ordinary way
                message = " ".join(str(error).split())[:200]
                if vectorized.out_of_memory(error) and len(group) >= 4:
                    halves = vectorized.split(group, (len(group) + 1) // 2)
                    log.info(f"vectorized: group #{vectorized.numbers([job.index for job in group])} ran out of "
                             f"memory ({message}); training it as {len(halves)} groups")
                    groups[:0] = halves
                else:
                    log.info(f"vectorized: group #{vectorized.numbers([job.index for job in group])} could not "
                             f"train as one program ({message}); its jobs run one by one")
                    alone += group
                continue
            try:
                for job, result in zip(group, trained):
                    returns[job.index] = self._run(job.config, recorder(job, result))
            except Stopped:  # while its jobs are recorded: each job whose run is not complete, as above
                vectorized.record_stopped(training)
                raise
        training = None  # as above, before the jobs that train alone
        gc.collect()
        for job in sorted(alone, key=lambda job: job.index):
            vectorized.release(job)
            returns[job.index] = self._run(job.config, self.task_function)
        return [returns[job.index] for job in jobs]

    def _compose(self, index: int, overrides: Sequence[str]) -> DictConfig:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = index
        return config

    def _run(self, config: DictConfig, task_function: TaskFunction) -> JobReturn:
        """Run one job as Hydra's basic launcher does; the app's one-line error (a SystemExit) ends only this job."""
        try:
            result = run_job(hydra_context=self.hydra_context, task_function=task_function, config=config,
                             job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        except SystemExit as exit:
            result = JobReturn(overrides=list(config.hydra.overrides.task), status=JobStatus.FAILED)
            result.return_value = exit
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return result


def recorder(job, trained) -> Callable[[DictConfig], float]:
    """The job's stand-in for the app: record what its group trained for it, return the objective."""

    def record_job(config: DictConfig) -> float | None:
        from experiments import sweep, vectorized
        from experiments.cli import objective_value

        try:
            return objective_value(config, vectorized.record(config, job, trained))
        except Exception as error:  # as the app does for a failed job: a FAILED child, the sweep goes on
            sweep.record_failed_job(config, sweep.current_job(), error)
            return None

    return record_job
