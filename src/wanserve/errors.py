"""One catalogue of error codes, and one error type for the whole service.

A `ServiceError` carries a `Code` from the catalogue below and a `message` that tells the user what
to change. It knows nothing of HTTP: the API layer maps each code to a status (its one mapping
point, `api/dashscope/errors.py`), and the worker stores the same code and message on a FAILED
task. Build errors with the factories below so a code is never spelled twice.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Every error code wanserve answers or stores (the hosted service's codes, contract section 6)."""

    INVALID_PARAMETER = "InvalidParameter"
    DATA_INSPECTION = "InvalidParameter.DataInspection"
    EMPTY_MODEL = "BadRequest.EmptyModel"
    EMPTY_INPUT = "BadRequest.EmptyInput"
    ILLEGAL_INPUT = "BadRequest.IllegalInput"
    INVALID_URL = "InvalidURL"
    URL_CONNECTION_REFUSED = "InvalidURL.ConnectionRefused"
    URL_TIMEOUT = "InvalidURL.Timeout"
    FILE_FORMAT = "InvalidFile.Format"
    FILE_SIZE = "InvalidFile.Size"
    FILE_RESOLUTION = "InvalidFile.Resolution"
    FILE_DURATION = "InvalidFile.Duration"
    IMAGE_FORMAT = "InvalidImage.FileFormat"
    IMAGE_RESOLUTION = "InvalidImageResolution"
    INVALID_API_KEY = "InvalidApiKey"
    ACCESS_DENIED = "AccessDenied"
    NOT_FOUND = "NotFound"
    FILE_EXISTS = "FileAlreadyExists"
    ENTITY_TOO_LARGE = "EntityTooLarge"
    UNSUPPORTED_OPERATION = "UnsupportedOperation"
    # Extension: an X-Idempotency-Key reused with another request (Alibaba Cloud's name for it)
    IDEMPOTENT_MISMATCH = "IdempotentParameterMismatch"
    RATE_QUOTA = "Throttling.RateQuota"
    ALLOCATION_QUOTA = "Throttling.AllocationQuota"
    THROTTLING = "Throttling"  # too many of something at once (event streams of a key or account)
    INTERNAL = "InternalError"
    INTERNAL_ALGO = "InternalError.Algo"
    INTERNAL_TIMEOUT = "InternalError.Timeout"


class ServiceError(Exception):
    """A problem the user can fix (or, for InternalError*, one they can only retry)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = Code(code)
        self.message = message


# -- factories, one per family ----------------------------------------------------------------


def invalid_parameter(message: str) -> ServiceError:
    return ServiceError(Code.INVALID_PARAMETER, message)


def invalid_file(code: Code, message: str) -> ServiceError:
    """A media input downloaded fine but is not usable (InvalidFile.*, InvalidImage*)."""
    return ServiceError(code, message)


def access_denied(message: str) -> ServiceError:
    return ServiceError(Code.ACCESS_DENIED, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(Code.NOT_FOUND, message)


def idempotent_mismatch(key: str, task_id: str) -> ServiceError:
    """An idempotency key already names a living task created from another request."""
    return ServiceError(Code.IDEMPOTENT_MISMATCH,
                        f"The idempotency key {key!r} was already used for task {task_id} with a different "
                        "request; send the same request again, or use a new key for a new task.")


def algo_failure(detail: str) -> ServiceError:
    """The model itself failed on a task (InternalError.Algo)."""
    return ServiceError(Code.INTERNAL_ALGO, f"inference internal error: {detail}")


def out_of_memory(where: str = "memory", what: str = "") -> ServiceError:
    """The one message for a task that ran out of (GPU) memory, whichever layer noticed."""
    return algo_failure(f"out of {where}{' ' + what if what else ''}. Try a lower resolution or a shorter "
                        "duration.")


class QuotaExceeded(ServiceError):
    """A create refused by an account's quota (429); `retry_after_s` is when trying again can succeed."""

    def __init__(self, code: Code, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after_s = retry_after_s


def rate_quota(retry_after_s: float) -> QuotaExceeded:
    """Too many creates in the account's (or key's) rate window (the hosted message)."""
    return QuotaExceeded(Code.RATE_QUOTA, "Requests rate limit exceeded, please try again later.",
                         retry_after_s)


def allocation_quota(detail: str = "") -> QuotaExceeded:
    """The account's queue is full (the hosted message, and what to do)."""
    return QuotaExceeded(Code.ALLOCATION_QUOTA, "Allocated quota exceeded, please increase your quota limit."
                         + (f" {detail}" if detail else ""))


def throttled(detail: str, retry_after_s: float) -> QuotaExceeded:
    """Too many requests of one kind open at once (the hosted `Throttling` message, then what to do)."""
    return QuotaExceeded(Code.THROTTLING, f"Requests throttling triggered. {detail}", retry_after_s)


def run_timeout(limit_s: float) -> ServiceError:
    """A task that ran past the run cap (the hosted 3 h rule)."""
    return ServiceError(Code.INTERNAL_TIMEOUT,
                        "An internal timeout error has occured during execution, please try again later or "
                        f"contact service support. (The task ran longer than {limit_s:g} s.)")


class TaskCanceled(Exception):
    """Raised inside a running task when its cancellation has been recorded; the worker stops it."""


class LeaseLost(Exception):
    """Raised inside a running task when another worker now owns it (our lease ran out)."""


class ShuttingDown(Exception):
    """Raised inside a running task when its worker is shutting down and its grace period is over: the
    worker hands the task back (`release`), and it runs again as if this attempt never started."""
