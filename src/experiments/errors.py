"""The exception types the commands report in a line: bad input, divergence, a stop by a signal."""
import _thread
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import NoReturn


def typed(value) -> str:
    """A config value in an error line as a user types it on the command line: null for None, true and false for
    booleans."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


class ConfigError(Exception):
    """The config or the data given cannot work; the message says what is wrong and how to fix it."""


class Diverged(ConfigError):
    """Training produced a non-finite loss (or one past the divergence threshold): these settings cannot train."""


class ServerLost(ConfigError):
    """The tracking server went away during a run and did not come back in time; the message says where the
    records it did not get are kept and how to send them."""


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


class OutOfTime(BaseException):
    """SLURM's time limit is near (SIGUSR2) and the job saved no checkpoint since it started: requeued, it would
    start again from the same point each time and never finish. A BaseException on its way from the signal handler,
    as Stopped (MLflow wraps an Exception raised inside its requests in its own); its run ends FAILED, and
    requeued_on_signals turns it into a ConfigError, a failed job of the sweep."""


received_signal: int | None = None  # the signal that stopped this process, once one has
signal_stop: BaseException | None = None  # what its handler raised: Stopped, Requeued or OutOfTime
stop_reached = False  # whether signal_stop reached a stops_kept block as itself
stop_dropped = False  # whether Python dropped signal_stop (deliver_dropped_stop)
held_signal: int | None = None  # inside stops_held_back: the signal whose stop waits for the block's end
holding: str | None = None  # inside stops_held_back: what its stop waits for, in words
checkpoint_saved = False  # whether this process saved a training state (callbacks.LastCheckpoint sets it)
WORKERS_GRACE_SECONDS = 20  # for the joblib launcher's workers to end their runs (schedulers wait 30 s to SIGKILL)


def stop_on_signals() -> None:
    """Make SIGINT and SIGTERM raise Stopped, so that every run open ends KILLED and the command exits 128+N."""

    def stop(signum: int) -> NoReturn:
        stop_workers(signum)
        raise Stopped(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal_handler(stop))
    sys.unraisablehook = deliver_dropped_stop


def signal_handler(stop: Callable[[int], NoReturn]) -> Callable:
    """A signal handler that raises what `stop(signum)` raises at the first signal, and ignores the later ones (a
    second Ctrl-C while stopping must not interrupt the clean-up), but for the one deliver_dropped_stop sends.

    Code the signal interrupts may also drop the stop without a trace (C code that clears the error and raises
    nothing of its own): training would go on, to its end or, in a worker of the joblib launcher, until the
    launching process kills it, its run left RUNNING. So the training loops (Task.training_step, trainer=compiled's
    and the vectorised launcher's) and Task's evaluation (its test) raise `signal_stop` again at their next batch
    (epoch, for the compiled one) once it is set: while they run, no stop is on its way out; and so does the end of a
    stops_kept block, for a stop dropped after them (in a run's records). A later signal is still ignored, not taken
    for a lost stop: the handler cannot tell one from a stop whose clean-up runs, and a joblib worker stopped by
    Ctrl-C gets a second SIGINT as a rule (the process group's, then the one stop_workers forwards), often in that
    clean-up."""

    def handle(signum, frame):
        global received_signal, signal_stop, stop_dropped, held_signal
        if stop_dropped:
            stop_dropped = False
            raise signal_stop
        if holding and received_signal is None:  # a later signal, in a stop's clean-up, is ignored as below
            if held_signal is None:
                held_signal = signum
                print(f"{signal.Signals(signum).name}: stopping once {holding}", file=sys.stderr, flush=True)
            return
        if received_signal is None:
            received_signal = signum
            try:
                stop(signum)
            except BaseException as raised:
                signal_stop = raised
                raise

    return handle


def deliver_dropped_stop(unraisable) -> None:
    """sys.unraisablehook. Python drops an exception raised where it cannot go on (a weakref callback or a __del__
    that the garbage collector runs): it prints "Exception ignored in ..." and carries on. A signal's stop raised
    there would be lost, and the later signals ignored: it is raised again, wherever the main thread is 10 ms on."""
    global stop_dropped
    if signal_stop is None or unraisable.exc_value is not signal_stop:
        sys.__unraisablehook__(unraisable)
        return
    stop_dropped = True
    # From another thread: called here, the handler would run at this function's next instruction, where Python
    # drops its exception as well
    again = threading.Timer(0.01, _thread.interrupt_main, (received_signal,))
    again.daemon = True
    again.start()


def raise_stop_again() -> NoReturn:
    """Raise the signal's stop again, from a loop that reached its next batch after it, or a stops_kept block that
    ended without it: the stop was dropped on its way out (signal_handler)."""
    global stop_dropped
    stop_dropped = False  # on its way out again: deliver_dropped_stop's raise, due in 10 ms, would cut the clean-up
    raise signal_stop


@contextmanager
def stops_held_back(until: str) -> Iterator[None]:
    """Finish the block before a signal's stop, then stop: for work that a stop in its middle would leave broken for
    good (MLflow creating a SQLite store: an interrupted migration leaves a schema that neither MLflow nor its
    `mlflow db upgrade` can open). `until`: what the console is told the stop waits for."""
    global holding, held_signal
    holding = until
    try:
        yield
    finally:
        holding = None
        signum, held_signal = held_signal, None
        if signum is not None:
            signal.raise_signal(signum)


@contextmanager
def stops_kept() -> Iterator[None]:
    """Keep a signal's stop itself on its way out of the block. C code that the signal interrupted may put an
    error of its own in its place (matplotlib's pybind11 converters drop it and raise "ValueError: Invalid
    bounding box"): the run would end FAILED, and a sweep go on to its next job. So may Lightning, for a SIGTERM
    whose stop was dropped (signal_handler): it saw the signal too, and ends the fit with a SystemExit of its own
    (SIGTERMException), the run FAILED and the command's exit status 0. An error raised after the stop came through
    here is an error of its own (one in the clean-up of the stopped runs).

    A stop that came and was dropped is raised as the block ends, where the run would end FINISHED and the command go
    on (dropped in a run's test or records, which no training loop follows); but not while it is on its way out, the
    exception a caller handles (the vectorised launcher's clean-up of its stopped jobs opens their runs there)."""
    global stop_reached
    try:
        yield
    except (Exception, SystemExit) as error:  # never the stop itself, a BaseException
        if signal_stop is None or stop_reached:
            raise
        stop_reached = True
        raise signal_stop from error
    except BaseException as error:
        stop_reached = stop_reached or error is signal_stop
        raise
    if signal_stop is not None and sys.exc_info()[1] is not signal_stop:
        stop_reached = True
        raise_stop_again()


@contextmanager
def requeued_on_signals(timeout_min: int, checkpoint_interval: float | None) -> Iterator[None]:
    """Inside a SLURM job (hydra/launcher=slurm): SIGTERM (a preemption, `scancel --signal=TERM`) and SIGUSR2
    (what submitit asks SLURM to send `signal_delay_s` before the time limit) requeue the job and raise Requeued;
    a job that cannot be requeued (cancelled by `scancel`) raises Stopped, as anywhere. Only the first task
    requeues the job; the others stop with it. The handlers before are restored at the end.

    A preemption is requeued whatever happened before (as submitit does), but not a time limit that came before
    any new checkpoint: the job would come back to the same time limit at the same point again and again. It
    fails instead: its run ends FAILED, with a line saying whether to change `timeout_min` or the checkpoint
    interval. (Not submitit's count of time limits, hydra.launcher.max_num_timeout, kept by its own SIGUSR2 handler
    that this one replaces: it stops a long run that progresses, and requeues one that does not that many times.)"""
    started = time.monotonic()

    def slurm(*command: str) -> str | None:
        done = subprocess.run(command, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    def requeue(signum: int) -> NoReturn:  # the first signal only: SLURM sends SIGTERM again as it requeues the job
        job = os.environ["SLURM_JOB_ID"]
        # a job cancelled by scancel is no longer RUNNING when its SIGTERM comes: that one stays cancelled
        if (os.environ.get("SLURM_PROCID", "0") == "0"
                and slurm("squeue", "--noheader", "--format=%T", "--jobs", job) == "RUNNING"):
            if signum == signal.SIGUSR2 and not checkpoint_saved:
                raise OutOfTime(out_of_time(time.monotonic() - started, timeout_min, checkpoint_interval))
            if slurm("scontrol", "requeue", job) is not None:
                raise Requeued(signum)
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, signal_handler(requeue)) for signum in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        yield
    except OutOfTime as error:
        raise ConfigError(str(error)) from None
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def out_of_time(seconds: float, timeout_min: int, checkpoint_interval: float | None) -> str:
    """Why a job that SLURM's time limit stops `seconds` after it started, before it saved a checkpoint, is not
    requeued, and which setting to change."""
    if checkpoint_interval is None:
        fix = "keep trainer.callbacks.last_checkpoint (not null), which saves the training state to continue from"
    elif checkpoint_interval >= seconds:
        fix = (f"lower trainer.callbacks.last_checkpoint.interval ({checkpoint_interval:g} s) below that, "
               f"or raise hydra.launcher.timeout_min ({timeout_min})")
    else:
        fix = (f"no epoch ended in that time (a checkpoint is saved at an epoch's end): "
               f"raise hydra.launcher.timeout_min ({timeout_min})")
    return (f"SLURM's time limit is near (SIGUSR2) and the job saved no checkpoint in the {seconds:.0f} s since it "
            f"started: requeued, it would start again from the same point, so it is not; {fix}")


def is_joblib_worker(process: multiprocessing.process.BaseProcess) -> bool:
    """Whether `process` is a worker of the joblib launcher (hydra/launcher=parallel): a loky process."""
    if "joblib.externals.loky.backend.process" not in sys.modules:  # none started here
        return False
    from joblib.externals.loky.backend.process import LokyProcess

    return isinstance(process, LokyProcess)


def stop_workers(signum: int) -> None:
    """Pass the signal on to the joblib launcher's workers of this process, and give them WORKERS_GRACE_SECONDS
    to end their runs KILLED (worker_stops_on_signals): once this process stops, joblib kills them (SIGKILL),
    and a signal sent to this process alone (`kill`, a scheduler) would not reach them at all."""
    workers = [process for process in multiprocessing.active_children() if is_joblib_worker(process)]
    for worker in workers:
        with suppress(ProcessLookupError):
            os.kill(worker.pid, signum)
    deadline = time.monotonic() + WORKERS_GRACE_SECONDS
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))


@contextmanager
def worker_stops_on_signals() -> Iterator[None]:
    """Run a job in a worker of the joblib launcher as the command runs one: SIGINT and SIGTERM stop it, its run
    ends KILLED; then the worker ends with 128+N, which the launching process waits for (stop_workers)."""
    if not is_joblib_worker(multiprocessing.current_process()):
        yield
        return
    stop_on_signals()
    try:
        yield
    except Stopped as stop:
        # exiting: raised on, the stop would go back to joblib, which hands the worker its next job
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(stop.exit_code)
