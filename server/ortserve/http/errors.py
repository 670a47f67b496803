"""Domain errors -> HTTP statuses, from the one table protocol/status.py applies to gRPC.

A domain error's message goes to the caller as it is; anything else is a bug: logged with its
traceback and an error id, and the caller gets 500 with that id only (``describe``).
"""

from __future__ import annotations

from ortserve import errors
from ortserve.protocol.status import describe, status_for

#: gRPC status code name -> HTTP status (KServe v2 REST and Triton's HTTP front agree on these).
HTTP_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

#: Seconds a client told to come back (429 on a full queue) waits before retrying.
RETRY_AFTER_S = 1


class BodyTooLarge(errors.InvalidInput):
    """The request body is over the limit (``--max-message-bytes``): 413, naming the limit."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        got = f" (got {size} bytes)" if size is not None else ""
        super().__init__(
            f"the request body is larger than the limit of {limit} bytes{got}; "
            "the daemon's --max-message-bytes sets it"
        )


def http_status(exc: BaseException) -> int:
    """The HTTP status for ``exc`` (500 for anything that is not a domain error)."""
    if isinstance(exc, BodyTooLarge):
        return 413
    if not isinstance(exc, errors.OrtserveError):
        return 500
    return HTTP_STATUS.get(status_for(exc).name, 500)


def message(exc: BaseException, route: str = "http") -> str:
    """What the caller reads: a domain error's own message, or an error id for a bug (logged)."""
    return describe(exc, route)[1]


def retry_headers(status: int) -> dict[str, str]:
    """``Retry-After`` on 429 and 503: the request did not run and may be sent again."""
    return {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}
