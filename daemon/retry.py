"""Work that failed for a cause that passes is done again once the cause has passed.

Two such causes, one policy (:func:`retry_delay`: ``scoring.retry_initial_s`` doubling with each
failure in a row, at most ``scoring.retry_max_s``):

* **The outputs could not be written, or the study's files not read** (the storage volume full,
  another I/O error, the database connection lost: :data:`TRANSIENT`, :func:`will_retry`): the
  study goes back to ``complete`` with ``retry_at`` and is claimed again once it has passed
  (``daemon.worker.StudyScorer.fail`` and ``claim_next``).
* **A destination kept failing** until a delivery gave up (``dead`` after
  ``dispatch.max_attempts``, which fails the study): :func:`revive_deliveries`, a scheduled job,
  puts the study back to ``dispatching`` and its dead deliveries back to ``pending`` once that
  destination has accepted an object since (the cause has passed there), at most once per
  :func:`retry_delay`. A delivery is revived once (``delivery.revived``), with one attempt: an
  object the destination itself refuses (not a passing cause: a SOP class it does not take) is
  dead again after that try, and its study stays failed for good, where the operator sees it
  (the dashboard's dead letters, with their retry button).

Everything else that fails a study (a bug, a study no image of which can be read) stays
``failed``.
"""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import OperationalError

from daemon.logs import study_logger
from db import Database, Delivery, DeliveryState, Event, EventKind, Study, StudyResult, StudyState
from dicom_io.errors import StorageError, StorageFull

log = logging.getLogger(__name__)

#: Causes that pass: a study whose scoring failed on one of them is tried again later. A full
#: volume (StorageFull) is tried again until space is freed; the others (another I/O error on
#: the storage volume: a network mount that went away; the database connection lost) at most
#: :data:`MAX_OTHER_RETRIES` times in a row, then the study fails for good with the reason: an
#: error that does not pass (a read-only volume, a permission) must not be retried for ever.
TRANSIENT: tuple[type[BaseException], ...] = (StorageFull, StorageError, OperationalError)
MAX_OTHER_RETRIES = 5


def will_retry(exc: BaseException, retries: int) -> bool:
    """Whether a study whose scoring raised ``exc`` after ``retries`` earlier failures in a row
    is tried again (:data:`TRANSIENT`)."""
    if isinstance(exc, StorageFull):
        return True
    return isinstance(exc, TRANSIENT) and retries < MAX_OTHER_RETRIES


def retry_delay(retries: int, initial_s: float, max_s: float) -> float:
    """The wait before trying again after ``retries`` earlier failures in a row: ``initial_s``,
    doubled each time, at most ``max_s``."""
    return min(max_s, initial_s * 2 ** min(retries, 32))


def revive_deliveries(db: Database, now: dt.datetime, *, max_attempts: int, initial_s: float,
                      max_s: float) -> list[int]:
    """Put back to ``dispatching`` every ``failed`` study of whose current result every dead
    delivery goes to a destination that has delivered an object since that delivery's last
    attempt was due; return their ids (see the module docstring)."""
    revived: list[int] = []
    with db.session() as s:
        rows = s.execute(
            select(Study, Delivery)
            .join(StudyResult, and_(StudyResult.study_id == Study.id,
                                    StudyResult.study_revision == Study.revision,
                                    StudyResult.superseded.is_(False)))
            .join(Delivery, Delivery.result_id == StudyResult.id)
            .where(Study.state == StudyState.FAILED, Delivery.state == DeliveryState.DEAD,
                   or_(Study.retry_at.is_(None), Study.retry_at <= now))
            .order_by(Study.id, Delivery.id)
            .with_for_update(of=Study, skip_locked=True)).all()
        dead: dict[int, tuple[Study, list[Delivery]]] = {}
        for study, delivery in rows:
            dead.setdefault(study.id, (study, []))[1].append(delivery)
        last_delivered: dict[str, dt.datetime | None] = {}
        for study, deliveries in dead.values():
            for d in deliveries:
                if d.destination not in last_delivered:
                    last_delivered[d.destination] = s.scalar(
                        select(func.max(Delivery.delivered_at)).where(
                            Delivery.destination == d.destination,
                            Delivery.state == DeliveryState.DELIVERED))
            if any(d.revived for d in deliveries):
                continue  # refused again after its one more try: not a cause that passes
            if not all((last_delivered[d.destination] or _NEVER) > d.next_attempt_at
                       for d in deliveries):
                continue  # a destination still failing: the study stays failed for now
            for d in deliveries:
                d.state, d.attempts, d.next_attempt_at, d.revived = (
                    DeliveryState.PENDING, max(0, max_attempts - 1), now, True)
            wait = retry_delay(study.retries, initial_s, max_s)
            study.retries += 1
            study.retry_at = now + dt.timedelta(seconds=wait)
            study.state, study.state_reason = StudyState.DISPATCHING, None
            names = ", ".join(sorted({f"{d.object_kind} to {d.destination}" for d in deliveries}))
            detail = f"{names} tried again: the destination has accepted objects since"
            s.add(Event(at=now, study_id=study.id, kind=EventKind.RETRY, detail=detail))
            study_logger(log, study.study_instance_uid).info("%s", detail)
            revived.append(study.id)
    return revived


_NEVER = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
