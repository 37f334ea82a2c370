"""`python -m experiments [overrides]`: the Hydra app.

Only Hydra and OmegaConf load at start-up; torch, Lightning and MLflow load when a job runs, so
`--help` and `--cfg job` stay fast.
"""
import os
import warnings
from contextlib import nullcontext

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments import drawing, errors, store, sweep
from experiments.cli import (CONFIG_NAME, CONFIG_PATH, check_objective, check_override_types, check_progress,
                             heavy_import, log_warning, make_paths_absolute, objective_value, reported_as_one_line,
                             run_app)
from experiments.errors import worker_stops_on_signals
from experiments.ranges import check_ranges


def objective(config: DictConfig) -> float | None:
    """Run one experiment; the objective's final value, or None where a single run did not record it (Hydra ignores a
    single run's value: a run that trained is no error for want of a metric that ranks nothing)."""
    in_slurm_job = os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ
    with (errors.requeued_on_signals(HydraConfig.get().launcher.timeout_min,
                                     OmegaConf.select(config, "trainer.callbacks.last_checkpoint.interval"))
          if in_slurm_job else nullcontext(), errors.stops_kept()):
        check_override_types(config)
        check_ranges(config)
        check_objective(config)
        check_progress(config)
        make_paths_absolute(config)  # before the store is opened: hydra.job.chdir=true runs this in the job's folder
        store.check_experiment_name(config.tracking.experiment_name)
        store.check_usable(config.tracking.tracking_uri)  # in seconds, before torch and the data load
        drawing.start()  # before the heavy imports (see drawing.py)
        run = heavy_import("experiments.run").run  # the heavy imports (torch, Lightning, MLflow) start here
        metrics = run(config).metrics
        if HydraConfig.get().mode == RunMode.RUN:
            return metrics.get(config.objective.metric)
        return objective_value(config, metrics)


@hydra.main(config_path=CONFIG_PATH, config_name=CONFIG_NAME, version_base="1.3")
def app(config: DictConfig) -> float | None:
    """Run one experiment; return the objective's final value, for Hydra's sweepers to optimise.

    A sweep's job that fails is recorded as a FAILED child run and returns None (a failed trial, to
    Optuna), so that the other jobs still run; the sweep's parent run then fails (sweep.ParentRun).
    """
    job = sweep.current_job()
    if job is None:
        with reported_as_one_line():
            return objective(config)
    # a worker process (hydra/launcher=parallel, slurm) did not start in run_app: its warnings are logged the same way
    warnings.showwarning = log_warning
    with worker_stops_on_signals():  # a job in a worker process of hydra/launcher=parallel
        try:
            return objective(config)
        except Exception as error:
            sweep.record_failed_job(config, job, error)
            return None


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
