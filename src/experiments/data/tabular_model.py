"""The MLflow model of a tabular run, logged as code (MLflow's "models from code"), so that nothing is
pickled: loading it reads the run's model.pt as `experiments.predict` does (tabular.RawRowsModel)."""
import mlflow

from experiments.data.tabular import RawRowsModel

mlflow.models.set_model(RawRowsModel())
