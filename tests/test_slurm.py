"""hydra/launcher=slurm for real: jobs submitted with sbatch to a one-node SLURM cluster on this machine
(scripts/slurm_cluster.sh), tracked on a real `mlflow server`: a sweep as a job array, a DDP run of two
SLURM tasks, a job that SLURM stops mid-run (a preemption, a time limit), requeues, and that continues its run,
one whose time limit comes before a checkpoint, which fails, and a cancelled job."""
import math
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import QUIET, ROOT, assert_continued_as_uninterrupted, cli, start
from mlflow import MlflowClient

CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
# Jobs sized for this machine: one CPU and 1 GB each, no GPU, well inside the time limit.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster for this test process (its own ports: each pytest worker has its own), with
    SLURM_CONF set so that sbatch, squeue and scancel, here and in the commands the tests start, use it.
    Installed first where it is missing (Debian's packages, as root)."""
    if os.geteuid() != 0:
        pytest.skip("a SLURM cluster on this machine needs root (munged, slurmctld and slurmd run as root)")
    if not all(shutil.which(command) for command in ("slurmctld", "slurmd", "sbatch", "munged")):
        try:
            installed = subprocess.run([CLUSTER, "install"], capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip("installing SLURM (apt-get install slurmctld slurmd slurm-client munge) took over 10 minutes")
        if installed.returncode != 0:
            pytest.skip("SLURM is not installed and apt-get could not install it (slurmctld slurmd slurm-client "
                        f"munge): {(installed.stderr.strip().splitlines() or ['no message'])[-1]}")
    folder = tmp_path_factory.mktemp("slurm")
    ports = {"SLURMCTLD_PORT": str(free_port()), "SLURMD_PORT": str(free_port())}
    started = subprocess.run([CLUSTER, "start", folder], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **ports})
    if started.returncode != 0:
        pytest.skip(f"the SLURM cluster did not start: {started.stderr.strip()}")
    daemons = [int((folder / name).read_text()) for name in ("slurmctld.pid", "slurmd.pid", "munge/munged.pid")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(folder / "slurm.conf"))
        try:
            yield folder
        finally:
            subprocess.run([CLUSTER, "stop", folder], timeout=300, check=True)
    for pid in daemons:  # nothing of the cluster is left running (a zombie waiting for its parent has ended)
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "State:\tZ" in status.read_text(), f"process {pid} of the SLURM cluster runs"


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def job_state(job: str) -> str:
    """RUNNING, PENDING, COMPLETING, CANCELLED, ... as SLURM has it now (finished jobs stay listed MinJobAge, 60 s)."""
    return slurm("squeue", "--noheader", "--format=%T", "--states=all", "--jobs", job).strip()


def job_folders(isolated: Path) -> list[Path]:
    """The sweep's `.submitit/<job id>` folders: each job's SLURM script and logs."""
    return sorted(folder for folder in isolated.glob("multirun/*/*/.submitit/*") if folder.is_dir())


def sweep_runs(client: MlflowClient, experiment: str = "experiments"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every other run is a child of the parent"
    return parent, children


def test_a_sweep_runs_as_a_slurm_job_array_tracked_on_a_server(slurm_cluster, tracking_server, isolated):
    result = cli("-m", "experiments", "-m", *SLURM, "tracking=server", f"tracking.tracking_uri={tracking_server}",
                 "optimizer.lr=0.1,0.01", "model=mlp,linear", "data=xor", "trainer.max_epochs=2", *QUIET)
    assert result.returncode == 0, result.stderr

    parent, children = sweep_runs(MlflowClient(tracking_server))
    assert parent.info.status == "FINISHED" and parent.data.tags["best.run_id"] in {c.info.run_id for c in children}
    assert sorted(child.info.run_name for child in children) == sorted(
        f"optimizer.lr={lr},model={model}" for lr in ("0.1", "0.01") for model in ("mlp", "linear"))
    assert {child.info.status for child in children} == {"FINISHED"}

    (array,) = {folder.name.split("_")[0] for folder in job_folders(isolated)}  # one sbatch: a job array
    script = next(isolated.glob(f"multirun/*/*/.submitit/{array}/{array}_submission.sh")).read_text()
    assert "#SBATCH --array=0-3" in script
    for task in range(4):  # each job's own log, written on the node
        log = next(isolated.glob(f"multirun/*/*/.submitit/{array}_{task}/{array}_{task}_0_log.out")).read_text()
        assert "Job completed successfully" in log


def test_a_ddp_run_of_two_slurm_tasks_is_one_mlflow_run(slurm_cluster, tracking_server, isolated):
    epochs = 3
    result = cli("-m", "experiments", "-m", *SLURM, "hydra.launcher.tasks_per_node=2", "tracking=server",
                 f"tracking.tracking_uri={tracking_server}", "trainer=ddp", "trainer.accelerator=cpu",
                 "trainer.devices=2", "data=circle", "data.n_points=200", f"trainer.max_epochs={epochs}", *QUIET)
    assert result.returncode == 0, result.stderr

    client = MlflowClient(tracking_server)
    parent, (run,) = sweep_runs(client)
    assert (parent.info.status, run.info.status) == ("FINISHED", "FINISHED")
    (folder,) = job_folders(isolated)[-1:]
    for task in (0, 1):  # SLURM started both processes
        assert "Job completed successfully" in (folder / f"{folder.name}_{task}_log.out").read_text()
    params = run.data.params
    train_points = int(params["data.n_points"]) * (1 - float(params["data.val_fraction"]))
    steps_per_epoch = math.ceil(train_points / 2 / int(params["data.batch_size"]))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert len(steps) == epochs and all(b - a == steps_per_epoch for a, b in zip(steps, steps[1:])), \
        "each of the 2 processes trained on half of the training points each epoch"


@pytest.fixture
def started():
    """`start` (conftest) for commands that a failed test leaves running: they are killed at its end."""
    processes = []
    yield lambda *args: processes.append(start(*args)) or processes[-1]
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(condition, what: str, timeout: float = 300):
    """Poll `condition` until it gives something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout} s for {what}")


def training_run(client: MlflowClient):
    """The run of the sweep's job 0 once it has recorded a training epoch; None before."""
    experiment = client.get_experiment_by_name("experiments")
    runs = client.search_runs([experiment.experiment_id], "tags.`sweep.job` = '0'") if experiment else []
    return runs and "train/loss" in runs[0].data.metrics and runs[0]


@pytest.mark.parametrize("signal", ["TERM", "USR2"])
def test_a_job_stopped_by_slurm_is_requeued_and_continues_its_run(slurm_cluster, tracking_server, isolated, started,
                                                                  signal):
    """SIGTERM (as a preemption sends it) or SIGUSR2 (as SLURM sends it before the time limit, to the job's steps
    as `scancel --signal` does) sent to a running job requeues the job; the requeued job continues the same MLflow
    run from its last checkpoint and ends with the metrics of a run never stopped."""
    epochs = 200  # some seconds of training: a checkpoint is saved each second
    setting = ["tracking=server", f"tracking.tracking_uri={tracking_server}", "data=circle",
               f"trainer.max_epochs={epochs}", *QUIET]
    uninterrupted = started("-m", "experiments", *setting, "tracking.experiment_name=uninterrupted")
    sweep = started("-m", "experiments", "-m", *SLURM, *setting)
    wait_for(lambda: list(isolated.glob("multirun/*/*/0/checkpoints/last.ckpt")) or sweep.poll() is not None,
             "the job's first checkpoint")
    job = slurm("squeue", "--noheader", "--format=%i").split()[0]
    slurm("scancel", f"--signal={signal}", job)

    client = MlflowClient(tracking_server)
    wait_for(lambda: job_state(job) == "PENDING", "the job requeued")
    _, (stopped,) = sweep_runs(client)
    assert stopped.info.status == "SCHEDULED", "not KILLED or FAILED: the requeued job continues it"
    # SLURM holds a requeued job for 2 minutes before it may start again; an administrator may start it now
    slurm("scontrol", "update", f"JobId={job}", "StartTime=now")
    _, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.communicate()[1]

    parent, (run,) = sweep_runs(client)
    assert run.info.run_id == stopped.info.run_id and (run.info.status, parent.info.status) == ("FINISHED", "FINISHED")
    log = next(isolated.glob(f"multirun/*/*/.submitit/{job}/{job}_0_log.err")).read_text()
    assert f"run {run.info.run_id} SCHEDULED: SLURM requeued the job" in log
    script = next(isolated.glob(f"multirun/*/*/.submitit/{job}/{job}_submission.sh")).read_text()
    assert "#SBATCH --signal=USR2@120" in script, "SLURM sends the job SIGUSR2 2 minutes before its time limit"
    (reference,) = client.search_runs([client.get_experiment_by_name("uninterrupted").experiment_id])
    assert_continued_as_uninterrupted(client, run.info.run_id, reference.info.run_id, epochs)


def test_a_job_cancelled_with_scancel_is_not_requeued_and_its_run_ends_killed(slurm_cluster, tracking_server, started):
    sweep = started("-m", "experiments", "-m", *SLURM, "tracking=server", f"tracking.tracking_uri={tracking_server}",
                  "data=circle", "trainer.max_epochs=100000", *QUIET)
    client = MlflowClient(tracking_server)
    run = wait_for(lambda: training_run(client), "the job's run to train")
    job = slurm("squeue", "--noheader", "--format=%i").split()[0]
    slurm("scancel", job)
    wait_for(lambda: client.get_run(run.info.run_id).info.status != "RUNNING", "the run to end")
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    wait_for(lambda: job_state(job) not in ("RUNNING", "COMPLETING"), "the job to end", 60)
    assert job_state(job) == "CANCELLED", "not requeued"
    sweep.terminate()  # the sweep's command, still waiting for the job's result; its parent run ends KILLED
    assert sweep.wait(timeout=60) == 143


def test_a_job_at_its_time_limit_with_no_new_checkpoint_is_not_requeued_and_its_run_fails(
        slurm_cluster, tracking_server, isolated, started):
    """SIGUSR2 (SLURM's time limit is near) to a job that saved no checkpoint since it started: requeued, it would
    start again from the same point at every time limit. It is not requeued; its run ends FAILED with the fix."""
    sweep = started("-m", "experiments", "-m", *SLURM, "tracking=server", f"tracking.tracking_uri={tracking_server}",
                    "data=circle", "trainer.max_epochs=100000", "trainer.callbacks.last_checkpoint.interval=1000",
                    *QUIET)
    client = MlflowClient(tracking_server)
    run = wait_for(lambda: training_run(client), "the job's run to train")
    job = slurm("squeue", "--noheader", "--format=%i").split()[0]
    slurm("scancel", "--signal=USR2", job)

    wait_for(lambda: client.get_run(run.info.run_id).info.status != "RUNNING", "the run to end")
    failed = client.get_run(run.info.run_id)
    fix = ("lower trainer.callbacks.last_checkpoint.interval (1000 s) below that, "
           "or raise hydra.launcher.timeout_min (20)")
    assert failed.info.status == "FAILED" and fix in failed.data.tags["error"]
    wait_for(lambda: job_state(job) not in ("RUNNING", "COMPLETING"), "the job to end", 60)
    assert job_state(job) == "COMPLETED", "not requeued"
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 1, stderr  # the sweep ends, its job failed
    log = next(isolated.glob(f"multirun/*/*/.submitit/{job}/{job}_0_log.err")).read_text()
    (line,) = [line for line in log.splitlines() if "SLURM's time limit is near" in line]
    assert line.startswith(f"error: job 0 ({failed.info.run_name}) failed: ") and line.endswith(fix), line
