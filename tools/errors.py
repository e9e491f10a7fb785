"""Typed errors a user or the planner can cause.

Every error carries a one-line message a person can read. The agent turns them into tool
messages (so the model can recover or explain); surfaces turn them into chat messages or HTTP
errors via `code`. Nothing here is a crash: raising one of these never loses a stored image.
"""

from __future__ import annotations


class AtelierError(Exception):
    """Base class: `str(err)` is the one-line message shown to a person or the model."""

    code = "error"  # stable machine-readable code (HTTP layer maps it to a status)
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadImageError(AtelierError):
    """An upload was rejected (format, size, truncated, decompression bomb...)."""

    code = "bad_image"


class UnknownRefError(AtelierError):
    """An image reference that is malformed or not in the store."""

    code = "unknown_ref"
    http_status = 404


class ToolArgumentError(AtelierError):
    """A tool call whose arguments do not validate against the tool contract."""

    code = "bad_arguments"


class PromptTooLongError(AtelierError):
    """A message (or a text argument) longer than the profile's `limits.max_prompt_chars`."""

    code = "prompt_too_long"
    http_status = 400


class RefusedError(AtelierError):
    """A request, tool call or result refused by the safety policy."""

    code = "refused"
    http_status = 400

    def __init__(self, message: str, *, category: str = "", decision: str = "refuse"):
        super().__init__(message)
        self.category = category
        self.decision = decision


class RateLimitedError(AtelierError):
    """A user went over a rate limit; `retry_after` seconds until the next request is allowed."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


class ModelUnavailableError(AtelierError):
    """A profile names a model whose weights are not available on this machine."""

    code = "model_unavailable"
    http_status = 503


class EngineError(AtelierError):
    """The image engine failed (e.g. out of memory for a huge request)."""

    code = "engine_error"
    http_status = 500


class CancelledError(AtelierError):
    """Long work stopped by the user (raised from a progress callback)."""

    code = "cancelled"
    http_status = 499


class ThreadBusyError(AtelierError):
    """Another request (in this or another process) is running a turn of the same conversation,
    and it did not finish within the profile's `limits.thread_busy_wait_s`."""

    code = "thread_busy"
    http_status = 409


class DatabaseFileError(AtelierError):
    """A database file of the data root (sessions, audit log, rate limits) that SQLite cannot read
    (not a database, truncated, corrupt). Nothing was written to it."""

    code = "bad_database"
    http_status = 503


class CheckpointError(AtelierError):
    """A turn could not be saved to the sessions database (read-only file, full disk, a value the
    database cannot hold): the turn's answer is not kept, and nothing of it is shown as done."""

    code = "checkpoint_failed"
    http_status = 503
