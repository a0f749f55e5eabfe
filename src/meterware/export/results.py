"""What an exporter reports: a `Rejection` (an event the sink will never take), the
`Progress` of one batch, and the `Summary` of a run.

Plain values; it imports nothing of meterware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Progress", "Rejection", "Summary"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the sink will never take: its place in the outbox, id, account, and the
    sink's reason."""

    seq: int
    id: str
    account_id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.id, "account_id": self.account_id,
                "reason": self.reason}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Progress:
    """What one `run_once` did.

    `held` is False when another exporter held the lease (nothing was sent, or what was
    sent was not acknowledged: the lease was lost during the batch). `read` events were
    read after the cursor; of them `sent` were accepted and `rejected` given up on, both
    acknowledged; `waiting` were not, and go again next time. `position` is the cursor
    afterwards; `caught_up` that nothing was left after it when it was read; `lag` the
    age of the oldest event not acknowledged (0 when caught up).
    """

    held: bool
    read: int = 0
    sent: int = 0
    rejected: tuple[Rejection, ...] = ()
    waiting: int = 0
    position: int = 0
    caught_up: bool = False
    lag: float = 0.0


@dataclass
class Summary:
    """What `run` did, for people and for the exit status.

    - `reader` - the reader (and lease) name.
    - `sent` - events the sink accepted, `rejected` those it will never take.
    - `position` - the cursor at the end; `remaining` the events after it (None when
      the store could not say).
    - `lease_held` - another exporter held the lease when the run ended.
    - `unavailable` - why the run gave up (the sink or the store kept failing).
    - `batches`, `failures` - batches acknowledged, and failed attempts retried.
    """

    reader: str
    sent: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    position: int = 0
    remaining: int | None = None
    lease_held: bool = False
    unavailable: str | None = None
    batches: int = 0
    failures: int = 0

    def add(self, progress: Progress) -> None:
        """Take in one batch's progress."""
        self.sent += progress.sent
        self.rejected.extend(progress.rejected)
        if progress.held:
            self.position = progress.position
            self.batches += 1 if progress.sent or progress.rejected else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "reader": self.reader,
            "sent": self.sent,
            "rejected": [r.as_dict() for r in self.rejected],
            "position": self.position,
            "remaining": self.remaining,
            "lease_held": self.lease_held,
            "unavailable": self.unavailable,
            "batches": self.batches,
            "failures": self.failures,
        }
