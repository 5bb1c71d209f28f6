"""The things a journey moves: the patient (one chain of identity), a batch (one collection's
manufacture), and how an attempt ends.

A batch's fields are exactly its stored ``BatchRecord`` plus the live bookings it holds, so the record is
read straight off the batch at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..config import Site
from ..records import BatchRecord
from .slotplan import SlotBooking


class Outcome(Enum):
    """How one stage or one attempt ended; only RECOLLECT sends the patient back for another apheresis."""

    LOST = "lost"  # patient lost (dropout, or a failure with no further collection); batch record already says why
    ABANDONED = "abandoned"  # patient dropped out while the batch was live: the journey marks the batch abandoned
    RECOLLECT = "recollect"  # this batch failed; a new collection may be tried
    MADE = "made"  # manufacture finished, cryopreserved
    RELEASED = "released"  # QP released the batch
    INFUSED = "infused"  # the journey's good end


class BatchStopped(Exception):
    """Raised inside manufacture when the batch cannot go on; caught once, where its units are returned."""

    def __init__(self, outcome: Outcome, status: str, reason: str, processed: bool = True) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.status = status  # the batch record's status
        self.reason = reason  # the batch record's failure reason
        self.processed = processed  # False: the suite saw no open processing, so no line clearance


class Patient:
    __slots__ = (
        "coi", "no", "site", "product", "urgency", "urgency_rank", "infectious", "referred", "dropout_at",
        "stage", "slot_booked", "first_apheresis", "infused", "status", "lost_time", "lost_stage",
        "lost_reason", "attempts",
    )

    def __init__(self, no: int, site: Site, product: str, urgency: str, rank: int, infectious: bool,
                 referred: float, dropout_at: float) -> None:
        self.coi = f"COI-{no:06d}"
        self.no = no
        self.site = site
        self.product = product
        self.urgency = urgency
        self.urgency_rank = rank
        self.infectious = infectious
        self.referred = referred
        self.dropout_at = dropout_at
        self.stage = "referred"
        self.slot_booked: float | None = None
        self.first_apheresis: float | None = None
        self.infused: float | None = None
        self.status = "in_progress"
        self.lost_time: float | None = None
        self.lost_stage: str | None = None
        self.lost_reason: str | None = None
        self.attempts = 0


@dataclass(slots=True, eq=False)
class Batch:
    """One attempt's material under its batch number ``<coi>-A<attempt>``."""

    coi: str
    batch_no: str
    attempt: int
    product: str
    status: str = "in_progress"
    failure_reason: str | None = None
    slot_day: float | None = None
    apheresis_start: float | None = None
    apheresis_end: float | None = None
    received: float | None = None
    ready: float | None = None
    mfg_start: float | None = None
    mfg_end: float | None = None
    qc_complete: float | None = None
    released: float | None = None
    release_mode: str | None = None
    shipped: float | None = None
    delivered: float | None = None
    infused: float | None = None
    expiry: float | None = None
    suite: str | None = None
    oos: bool = False
    recalled: bool = False
    held: dict[str, list[Any]] = field(default_factory=dict)  # kind -> [unit, requested, start, first step]
    slot: SlotBooking | None = None  # the booked start (slot mode)

    @classmethod
    def for_attempt(cls, p: Patient, attempt: int) -> Batch:
        return cls(p.coi, f"{p.coi}-A{attempt}", attempt, p.product)

    def record(self) -> BatchRecord:
        return BatchRecord(
            self.coi, self.batch_no, self.attempt, self.product, self.status, self.failure_reason, self.slot_day,
            self.apheresis_start, self.apheresis_end, self.received, self.ready, self.mfg_start, self.mfg_end,
            self.qc_complete, self.released, self.release_mode, self.shipped, self.delivered, self.infused,
            self.expiry, self.suite, self.oos, self.recalled,
        )
