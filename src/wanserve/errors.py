"""One error type for the whole service.

A `ServiceError` carries a DashScope error `code` and a `message` that tells the user what to
change. The API turns it into the contract's error body (`request_id`, `code`, `message`) with
`status`; the worker turns it into a FAILED task with the same `code` and `message`. Raising it is
the only way any layer reports a problem the user can fix.
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def invalid_parameter(message: str) -> ServiceError:
    return ServiceError("InvalidParameter", message, 400)


class TaskCanceled(Exception):
    """Raised inside a running task when its cancellation has been recorded; the worker stops it."""


class LeaseLost(Exception):
    """Raised inside a running task when another worker now owns it (our lease ran out)."""
