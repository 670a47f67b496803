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
