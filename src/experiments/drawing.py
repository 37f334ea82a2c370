"""The worker process that draws a command's plots (figures.py) while its runs log their models (plots.py).

Drawing a 2-D run's two figures (0.13 s, mostly matplotlib's text) and exporting its MLflow model
(0.1 s) took most of a tiny sweep job's records, one after the other; with a second core they overlap.
The worker is forked once, as the command's first run starts, before torch loads: forked later it
would share the run's memory, and each page the run then wrote to would be copied (forked for each
run's plots, the model's export took twice as long). It imports matplotlib itself. Linux only:
elsewhere some system libraries are not safe in a forked process, and the run's process draws.
Only the standard library here: the command imports this before anything heavy. concurrent.futures'
process pool is imported only where the worker starts: imported in the process that launches
hydra/launcher=parallel's jobs, it made joblib's resource tracker warn of leaked semaphores at the end.
"""
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Future

PR_SET_PDEATHSIG = 1  # Linux's prctl option: the signal a process gets when its parent ends
worker = None  # the worker, once started: a concurrent.futures.ProcessPoolExecutor of one process


def start() -> None:
    """Start the worker, where it is to draw and is not running: on Linux with a second core, in a command's own
    process, not one of a process pool's (hydra/launcher=parallel: its processes use the cores already, and one
    waits at its end for its own processes, while the worker waits for it to end). Every signal is held back from
    the worker until it has replaced this process's handlers (`started`)."""
    global worker
    if (worker is not None or sys.platform != "linux" or len(os.sched_getaffinity(0)) < 2
            or multiprocessing.parent_process() is not None):
        return
    from concurrent.futures import ProcessPoolExecutor

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        worker = ProcessPoolExecutor(1, multiprocessing.get_context("fork"), initializer=started,
                                     initargs=(os.getpid(), mask))
        worker.submit(int)  # nothing to do: the pool forks its worker at its first task
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def started(parent: int, mask: set) -> None:
    """The worker's start: it must never run the run's process's signal handlers (a stop's would end its MLflow run
    from here). They become the default actions, and a Ctrl-C, which reaches every process of the command, is
    ignored: the run's process handles it, then ends the worker as it ends. Killed (SIGKILL), it could not: the
    kernel then kills the worker (PR_SET_PDEATHSIG), which would otherwise wait for its next plots for ever. Then
    matplotlib is imported, ahead of the first plots."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # killed before that
        os._exit(1)
    for signum in signal.valid_signals():
        if callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    importlib.import_module("experiments.figures")


def submit(function: Callable, *args) -> Future | None:
    """`function(*args)` in the worker; None where there is none (`start`), or it has ended (killed): the caller
    then draws itself."""
    global worker
    if worker is None:
        return None
    from concurrent.futures.process import BrokenProcessPool

    try:
        return worker.submit(function, *args)
    except BrokenProcessPool:
        worker = None
        return None
