"""One exception tree for the whole service; foreign errors are translated at the boundaries.

    ExporterError
    ├── ApiError                      answered to HTTP clients as application/problem+json
    │   ├── BadRequest (400)
    │   │   └── ValidationFailed (422)   with per-field errors
    │   ├── Unauthorized (401)        carries WWW-Authenticate: Bearer
    │   ├── Forbidden (403)
    │   ├── NotFound (404)
    │   ├── MethodNotAllowed (405)
    │   ├── RequestTimeout (408)      headers or body not received within their deadline
    │   ├── Conflict (409)
    │   ├── PayloadTooLarge (413)
    │   ├── UriTooLong (414)
    │   ├── UnsupportedMediaType (415)
    │   ├── TooManyRequests (429)     carries Retry-After
    │   ├── HeadersTooLarge (431)
    │   ├── ClientClosedRequest (499) the client went away mid-request (nobody reads it)
    │   └── ServiceUnavailable (503)  a dependency failed; safe to retry
    ├── StoreError                    DynamoDB / PostgreSQL / S3 trouble
    │   ├── StoreUnavailable          transient: timeouts, throttling, connection loss
    │   │   └── WriteConflict         a transaction collided with another on the same item
    │   ├── ConditionFailed           a conditional write lost (state moved on)
    │   └── InvalidCursor             a page cursor this store did not issue for this caller
    ├── QueueError                    the arq queue in Redis
    │   ├── QueueUnavailable          Redis could not take or answer (transient)
    │   └── RedisNotDurable           Redis may evict queued messages (workers refuse to start)
    ├── ExportRefused                 a use case (``exporter.exports``) said no, by a rule
    │   ├── ExportNotFound            no such export (of this caller)
    │   ├── AlreadyFinished           a final export cannot be cancelled; carries the job
    │   │                             (defined in exports/cancel.py, beside the job type)
    │   ├── QuotaExceeded             over the daily quota; carries retry_after_s
    │   ├── IdempotencyKeyReused      a key repeated with another body
    │   ├── CreateContended           racing creates of one user did not settle
    │   ├── NotRetryable              an operator retry of an export that is not failed
    │   ├── ScheduleNotFound          no such export schedule (of this caller)
    │   └── ScheduleLimitReached      the user has as many schedules as allowed
    ├── TokenError                    a JWT failed verification (never says why to the client)
    │   └── TokenExpired              genuine but past its time (a download link: 410)
    └── ExportFailed                  a job cannot finish; ``transient`` says whether to retry
        └── DeliveryFailed            a delivery channel could not hand the file over
            └── MailError             SMTP trouble (transient for 4xx and connection loss)

    ├── RetryLater                    not a failure: the run asks the queue to try again later
    └── CommandError                  an operator command refused (one sentence, exit 1)

Stores raise ``StoreError``s and use cases ``ExportRefused``; neither knows HTTP. The API
layer maps them to ``ApiError`` (``api/problems.py``), handlers raise, and
``errors_middleware`` in ``app.py`` turns ``ApiError`` into a response. The CLI prints a
``CommandError`` and exits 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ExporterError(Exception):
    """Root of every error this package raises on purpose."""


class ApiError(ExporterError):
    status: int = 500
    code: str = "internal_error"
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        self.errors = list(errors or [])
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """RFC 9457 problem details, plus a stable machine-readable ``code``."""
        body: dict[str, Any] = {
            "type": f"https://exporter.local/problems/{self.code.replace('_', '-')}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(ApiError):
    status, code, title = 400, "bad_request", "Bad Request"


class ValidationFailed(BadRequest):
    status, code, title = 422, "validation_failed", "Unprocessable Content"


class Unauthorized(ApiError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        error = "invalid_token" if code == "invalid_token" else None
        challenge = 'Bearer realm="exporter"' + (f', error="{error}"' if error else "")
        super().__init__(detail, code=code, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(ApiError):
    status, code, title = 404, "not_found", "Not Found"


class MethodNotAllowed(ApiError):
    status, code, title = 405, "method_not_allowed", "Method Not Allowed"


class RequestTimeout(ApiError):
    status, code, title = 408, "request_timeout", "Request Timeout"


class Conflict(ApiError):
    status, code, title = 409, "conflict", "Conflict"


class Gone(ApiError):
    status, code, title = 410, "gone", "Gone"


class PayloadTooLarge(ApiError):
    status, code, title = 413, "payload_too_large", "Content Too Large"


class UriTooLong(ApiError):
    status, code, title = 414, "uri_too_long", "URI Too Long"


class UnsupportedMediaType(ApiError):
    status, code, title = 415, "unsupported_media_type", "Unsupported Media Type"


class TooManyRequests(ApiError):
    status, code, title = 429, "too_many_requests", "Too Many Requests"

    def __init__(self, detail: str | None = None, *, retry_after_s: int, code: str | None = None):
        super().__init__(detail, code=code, headers={"Retry-After": str(max(1, retry_after_s))})
        self.retry_after_s = max(1, retry_after_s)


class HeadersTooLarge(ApiError):
    status, code, title = 431, "header_too_large", "Request Header Fields Too Large"


class ClientClosedRequest(ApiError):
    """nginx's 499: the client disconnected before it had sent the whole request. Nobody
    receives the answer; it exists so metrics and logs count it apart from server errors."""

    status, code, title = 499, "client_closed_request", "Client Closed Request"


class ServiceUnavailable(ApiError):
    status, code, title = 503, "service_unavailable", "Service Unavailable"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": "5"})


class StoreError(ExporterError):
    """A data store call failed."""


class StoreUnavailable(StoreError):
    """The store could not be reached or answered with a retryable error."""


class WriteConflict(StoreUnavailable):
    """DynamoDB cancelled a transaction because another one was writing the same item at the
    same moment (``TransactionConflict``): read again and decide again."""


class ConditionFailed(StoreError):
    """A conditional write was refused: the item was not in the expected state."""


class InvalidCursor(StoreError):
    """A page cursor that does not decode to one this store issued for this caller."""


class QueueError(ExporterError):
    """The queue (arq on Redis) failed."""


class QueueUnavailable(QueueError):
    """Redis could not take the message."""


class RedisNotDurable(QueueError):
    """Redis may drop queued messages on its own (it evicts keys when memory is full)."""


class ExportRefused(ExporterError):
    """A use case refused by one of the export's rules; the message is fit for the caller."""


class ExportNotFound(ExportRefused):
    """No such export, or not the caller's (the two are never told apart)."""


class QuotaExceeded(ExportRefused):
    """The user asked for more exports than the rolling 24-hour quota allows."""

    def __init__(self, message: str, *, limit: int, retry_after_s: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(ExportRefused):
    """An Idempotency-Key came back with a different request body."""


class CreateContended(ExportRefused):
    """Concurrent creates for one user kept changing what this one read; retry shortly."""


class NotRetryable(ExportRefused):
    """Only failed exports can be put back on the queue."""


class ScheduleNotFound(ExportRefused):
    """No such export schedule, or not the caller's (the two are never told apart)."""


class ScheduleLimitReached(ExportRefused):
    """The user already has as many export schedules as one may have."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class TokenError(ExporterError):
    """A token failed verification. The reason is for logs, never for the client."""


class TokenExpired(TokenError):
    """A genuine token of ours whose lifetime is over (download links tell this apart: 410)."""


class RefreshTokenReused(TokenError):
    """A refresh token was presented after it had been used: its family is now revoked."""


class ExportFailed(ExporterError):
    """An export job cannot complete. ``code`` is short and stable; it is shown to the user."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient


class DeliveryFailed(ExportFailed):
    """A delivery channel (``exporter.delivery``) could not hand the file over; a new
    channel raises its own subclass, with ``transient`` set when a later try may succeed."""


class MailError(DeliveryFailed):
    """Sending the email failed."""


class RetryLater(ExporterError):
    """The run asks the queue to run this job again after ``delay_s`` (a transient failure
    waited out within the retry budget); ``jobs/worker.py`` turns it into arq's ``Retry``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"retry in {delay_s:.1f}s")
        self.delay_s = delay_s


class CommandError(ExporterError):
    """An operator command refused; the message is the one sentence it prints."""
