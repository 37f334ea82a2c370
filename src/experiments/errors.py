"""The exception types the commands report in a line: bad input, divergence, a stop by a signal."""
import signal


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
