"""`python -m experiments [overrides]`: the Hydra app.

Only Hydra and OmegaConf load at start-up; torch, Lightning and MLflow load when a job runs, so
`--help` and `--cfg job` stay fast.
"""
import hydra
from omegaconf import DictConfig

from experiments.cli import check_override_types, reported_as_one_line, run_app


@hydra.main(config_path="pkg://experiments.conf", config_name="config", version_base="1.3")
def app(config: DictConfig) -> None:
    with reported_as_one_line():
        check_override_types(config)
        from experiments.run import run  # the heavy imports (torch, Lightning, MLflow) start here

        run(config)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
