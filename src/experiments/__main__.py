"""`python -m experiments [overrides]`: the Hydra app.

Only Hydra and OmegaConf load at start-up; torch, Lightning and MLflow load when a job runs, so
`--help` and `--cfg job` stay fast.
"""
import hydra
from omegaconf import DictConfig

from experiments.cli import check_override_types, objective_value, reported_as_one_line, run_app


@hydra.main(config_path="pkg://experiments.conf", config_name="config", version_base="1.3")
def app(config: DictConfig) -> float:
    """Run one experiment; return the objective's final value, for Hydra's sweepers to optimise."""
    with reported_as_one_line():
        check_override_types(config)
        from experiments.run import run  # the heavy imports (torch, Lightning, MLflow) start here

        return objective_value(config, run(config).metrics)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
