"""The delivery seam: what a channel is given, what it must do, and what it returns.

The run (``jobs/run.py``) produces the file, then calls ``Channel.deliver`` and records the
``Receipt``; it knows nothing of email, attachments or storage. A channel does whatever its
medium needs (upload, compose, send), and in between calls its ``DeliveryGuard``:

1. ``keep_alive(work)`` around anything slow, so the job's heartbeat goes on (a slow relay
   is not a dead worker) and a cancel or takeover stops the work;
2. ``may_deliver()`` just before handing the file over: ``ConditionFailed`` if the export
   moved on (cancelled, or taken over by a newer attempt), ``False`` if a parallel run
   delivered it meanwhile (then the channel returns ``None`` without delivering); the run
   answers without reading the record while a write of its own confirmed it owns the job
   less than a progress interval ago (docs/reliability.md, the last look);
3. ``delivered(receipt)`` the moment the receiver accepted, before anything else that may
   fail: this writes ``delivered_at``, the once-only guard, in the same write as the
   export's success (docs/reliability.md: the one window in which a crash causes a second
   delivery is the time this write takes).

A channel raises ``DeliveryFailed`` (``errors.py``), ``transient`` when a later try may
succeed; the run retries or fails the job accordingly.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from exporter.models import ExportJob, User

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProducedFile:
    """The finished export file, open for reading from the start, and what it holds."""

    content: IO[bytes]
    name: str
    rows: int
    byte_size: int
    content_type: tuple[str, str]  # (maintype, subtype)
    sha256: str  # of the file's bytes, computed while it was written


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a channel did: recorded on the job (``delivery``, ``file_name``)."""

    kind: str  # e.g. "email_attachment", "download_link"
    file_name: str
    # time.monotonic() when the receiver accepted the file: the run's timings end here.
    accepted_at: float


class DeliveryGuard(Protocol):
    """What the run lends a channel for one delivery (see the module docstring)."""

    async def keep_alive(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` with the job's heartbeat beside it."""
        ...

    async def may_deliver(self) -> bool:
        """Check just before delivering; False when another run already delivered."""
        ...

    async def delivered(self, receipt: Receipt) -> None:
        """Record ``delivered_at`` (and the export's success) the moment the receiver
        accepted, once."""
        ...


class Channel(Protocol):
    """A way of getting a finished export file to its owner."""

    async def deliver(
        self, produced: ProducedFile, job: ExportJob, user: User, *, guard: DeliveryGuard
    ) -> Receipt | None:
        """Hand ``produced`` to ``user``; the receipt, or None when ``guard.may_deliver()``
        said another run delivered it already."""
        ...
