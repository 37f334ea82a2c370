"""The MLflow store: reachable, and safe for any number of processes opening it at the same moment.

Only the standard library is imported here; MLflow loads when a store is first opened.
"""
import fcntl
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from experiments import errors
from experiments.errors import ConfigError, stops_held_back, typed

SERVER_TIMEOUT_SECONDS = 5  # MLflow's own client retries an unreachable server for minutes
# The stores a run can be recorded in, for a line that refuses another
STORES = ("use a SQLite file (sqlite:///<folder>/mlflow.db, the default) or a tracking server (http://<host>:5000), "
          "in tracking.tracking_uri or MLFLOW_TRACKING_URI")
# What MLflow takes for a Databricks workspace (databricks, databricks://<profile>; databricks-uc, its Unity Catalog)
DATABRICKS = ("databricks", "databricks-uc")


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a `sqlite:///path` store; None for other stores."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def not_created(tracking_uri: str) -> bool:
    """Whether `tracking_uri` is a SQLite store not created yet: no file, or an empty one. MLflow creates it (its
    tables) when it first opens it, even only to look something up."""
    path = sqlite_path(tracking_uri)
    return path is not None and (not path.exists() or path.stat().st_size == 0)


@contextmanager
def one_process_at_a_time(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the folder of a SQLite store (nothing for other stores).

    MLflow creates a new SQLite store's tables, and an experiment, by checking then creating: two
    processes doing so at once fail with `table experiments already exists` or a duplicate
    experiment. SQLite's own locking covers the rows written afterwards (MLflow waits for a locked
    file). The folder is locked, not the store's file, whose locks are SQLite's own, nor a lock file
    of ours, which would be left beside the store.
    """
    path = sqlite_path(tracking_uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when closed, or when the process dies
        yield
    finally:
        os.close(folder)


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def unreachable(tracking_uri: str, timeout: float = SERVER_TIMEOUT_SECONDS) -> OSError | None:
    """Why the tracking server at `tracking_uri` does not answer its health check; None when it answers (or the
    store is no server)."""
    if not is_server(tracking_uri):
        return None
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:  # it answers (a proxy's or an authenticating server's refusal): MLflow says more
        return None
    except (urllib.error.URLError, OSError) as error:
        return error
    return None


def check_usable(tracking_uri: str) -> None:
    """A store MLflow refuses, or a server that does not answer, is one line, before anything trains. MLflow 3 refuses
    a folder (its file store, `./mlruns` or `file://...`) with a paragraph from deep inside its client, unless
    MLFLOW_ALLOW_FILE_STORE is set. A server's address without http:// (localhost:5000) and a SQLite store with two
    slashes (sqlite://mlflow.db) were tracebacks of MLflow's and SQLAlchemy's, once the run was built. A Databricks
    workspace (databricks), which MLflow reaches with the user's Databricks credentials, was called a folder; this
    project is not set up for one (untested, and a workspace's experiment names are paths such as /Users/...)."""
    if re.fullmatch(r"[\w.-]+:\d+/?", tracking_uri):
        raise ConfigError(f"tracking.tracking_uri={tracking_uri} is a tracking server's address without its scheme; "
                          f"use http://{tracking_uri} (or https://), in tracking.tracking_uri or MLFLOW_TRACKING_URI")
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if (scheme or tracking_uri) in DATABRICKS:
        raise ConfigError(f"tracking.tracking_uri={tracking_uri} is a Databricks workspace, which this project does "
                          f"not support (MLflow would need your Databricks credentials, and a workspace path as "
                          f"tracking.experiment_name); {STORES}")
    if scheme == "sqlite" and sqlite_path(tracking_uri) is None:
        raise ConfigError(f"tracking.tracking_uri={tracking_uri}: a SQLite store is sqlite:/// and its file's path "
                          "(sqlite:///mlflow.db, from the folder the command starts in, or sqlite:////<absolute path>), "
                          "in tracking.tracking_uri or MLFLOW_TRACKING_URI")
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise ConfigError(f"tracking.tracking_uri={tracking_uri} is a folder, MLflow's file store, which MLflow 3 "
                          f"no longer opens; {STORES}; or set MLFLOW_ALLOW_FILE_STORE=true to use the folder anyway")
    check_reachable(tracking_uri)


def check_experiment_name(name) -> None:
    """An experiment name MLflow refuses (empty, null, a number) is one line before the store is opened: MLflow's
    traceback came once the run was built, after it had created the store."""
    if name is None or name == "":
        raise ConfigError(f"tracking.experiment_name={typed(name)}: the MLflow experiment needs a name; give one, or "
                          "leave it out for the default (experiments)")
    if not isinstance(name, str):
        raise ConfigError(f"tracking.experiment_name={name}: the MLflow experiment's name is text; quote it "
                          f"(tracking.experiment_name='{name}')")


def check_reachable(tracking_uri: str) -> None:
    """A tracking server that does not answer is one line naming it, within seconds, before anything trains."""
    if error := unreachable(tracking_uri):
        reason = getattr(error, "reason", error)
        raise ConfigError(f"the MLflow tracking server {tracking_uri} cannot be reached ({reason}); start it "
                          "(mlflow server ...) or set tracking.tracking_uri (or MLFLOW_TRACKING_URI) to a "
                          "running one") from error


def use(tracking_uri: str) -> None:
    """Point MLflow's fluent API (mlflow.start_run, ...) at `tracking_uri`, leaving the environment as it was.
    MLflow also sets MLFLOW_TRACKING_URI, for its subprocesses; a later run in the same process (the Python API)
    would then read it as the user's choice (conf/tracking/local.yaml) and go to this store, not its own."""
    import mlflow

    with environment_restored("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(tracking_uri)


@contextmanager
def environment_restored(*names: str) -> Iterator[None]:
    """The environment variables `names` as they were before the block, whatever it set them to."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def experiment_id(tracking_uri: str, experiment_name: str, start_folder: Path) -> str:
    """The id of the experiment named so, creating the store and the experiment when missing. A signal while a new
    SQLite store is created stops the command once it is complete (stops_held_back): 1 to 2 s, MLflow's migrations.

    A store MLflow opens itself (SQLite, not a server) keeps a new experiment's artifacts in `./mlruns/<id>`, resolved
    against the working directory when this process first opens the store: it is opened, and the experiment created,
    in `start_folder`, the folder the command was started in, as without hydra.job.chdir=true, which makes the working
    directory the job's output folder (each run's model and plots would be in its own folder's mlruns/). MLflow's
    client has no option for that root (only `mlflow server --default-artifact-root`), and create_experiment's
    artifact_location cannot name MLflow's own `mlruns/<id>` before the id exists. An experiment already in the store
    keeps the absolute location it was created with. A SQLite store's path is absolute (cli.make_paths_absolute): the
    same file from `start_folder`."""
    import mlflow

    check_usable(tracking_uri)
    if sqlite_path(tracking_uri) is not None:
        keep_connections_on_stops()
    with one_process_at_a_time(tracking_uri), working_directory(start_folder):
        new = not_created(tracking_uri)
        with stops_held_back(f"the new MLflow store {sqlite_path(tracking_uri)} is complete") if new else nullcontext():
            client = mlflow.MlflowClient(tracking_uri)
            experiment = client.get_experiment_by_name(experiment_name)  # creates the store's tables
        return experiment.experiment_id if experiment else client.create_experiment(experiment_name)


@contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """Python 3.11's contextlib.chdir, for Python 3.10."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def keep_connections_on_stops() -> None:
    """A signal's stop raised amid a statement to a SQLite store leaves the store unlocked for the runs' clean-up.

    SQLAlchemy takes an exception that is no Exception for a connection cut in mid-statement, and closes the
    connection without closing its cursor: SQLite keeps such a connection, its transaction and its lock until the
    cursor goes, which the stop's traceback holds. Every write after it, from this process (the stopped run's
    metrics and status) or another (a sweep's parent, the other workers), then waited for the lock for MLflow's
    20 s and failed, the run left RUNNING. A signal's stop comes between two Python instructions, after the
    statement's C call returned: the connection is sound, and kept; its transaction is rolled back as MLflow's
    session closes."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "handle_error", connection_kept_on_stop):
        event.listen(Engine, "handle_error", connection_kept_on_stop)


def connection_kept_on_stop(context) -> None:
    """SQLAlchemy's handle_error event (keep_connections_on_stops)."""
    if context.original_exception is errors.signal_stop:
        context.is_disconnect = False
