"""The exception types the commands report in a line: bad input, divergence, a stop by a signal."""
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


class ConfigError(Exception):
    """The config or the data given cannot work; the message says what is wrong and how to fix it."""


class Diverged(ConfigError):
    """Training produced a non-finite loss (or one past the divergence threshold): these settings cannot train."""


class Stopped(BaseException):
    """The command was asked to stop (SIGINT, SIGTERM). A BaseException, like KeyboardInterrupt, so that
    no `except Exception` on the way (Hydra's job runner, a callback) takes it for a failed job, and not a
    KeyboardInterrupt, which Lightning turns into `sys.exit(1)`."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum  # what shells and schedulers expect: 130 for SIGINT, 143 for SIGTERM


class Requeued(Stopped):
    """SLURM asked this job to stop and it was requeued: the requeued job continues its run (resume.requeued_run)."""


received_signal: int | None = None  # the signal that stopped this process, once one has


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise Stopped, so that every run open ends KILLED and the command exits 128+N."""

    def stop(signum, frame):
        global received_signal
        if received_signal is None:  # a second Ctrl-C while stopping must not interrupt the clean-up
            received_signal = signum
            raise Stopped(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


@contextmanager
def requeued_on_signals() -> Iterator[None]:
    """Inside a SLURM job (hydra/launcher=slurm): SIGTERM (a preemption, `scancel --signal=TERM`) and SIGUSR2
    (what submitit asks SLURM to send `signal_delay_s` before the time limit) requeue the job and raise Requeued;
    a job that cannot be requeued (cancelled by `scancel`) raises Stopped, as anywhere. Only the first task
    requeues the job; the others stop with it. The handlers before are restored at the end."""

    def slurm(*command: str) -> str | None:
        done = subprocess.run(command, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    def requeue(signum, frame):
        global received_signal
        if received_signal is None:  # SLURM sends SIGTERM again as it requeues the job: the first one acts
            received_signal = signum
            job = os.environ["SLURM_JOB_ID"]
            # a job cancelled by scancel is no longer RUNNING when its SIGTERM comes: that one stays cancelled
            if (os.environ.get("SLURM_PROCID", "0") == "0"
                    and slurm("squeue", "--noheader", "--format=%T", "--jobs", job) == "RUNNING"
                    and slurm("scontrol", "requeue", job) is not None):
                raise Requeued(signum)
            raise Stopped(signum)

    previous = {signum: signal.signal(signum, requeue) for signum in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
