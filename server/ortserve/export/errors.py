"""The tool's errors: each carries a message for a person and the process exit status."""

from __future__ import annotations

#: Exit statuses of ``ortserve export|publish|inspect``.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3


class ExportError(Exception):
    """Anything that stops the tool; the message names the model, file, task or flag."""

    exit_code = EXIT_ERROR


class CheckFailed(ExportError):
    """A variant failed its check (or is slower): nothing was published."""

    exit_code = EXIT_CHECK_FAILED


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread, like KeyboardInterrupt for SIGINT,
    so that every cleanup on the way out runs (the staging folder, the temporary export folder,
    benchmark processes). Not an Exception: no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
