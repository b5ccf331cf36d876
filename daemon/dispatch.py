"""The delivery queue: persisted in the database, retried with backoff, every attempt an event.

Due deliveries are sent HIGH priority first, then oldest first. A delivery is claimed
(``pending -> sending``) in its own transaction before the network call; if the process dies
mid-send, :func:`daemon.worker.recover` puts it back to pending. A destination that keeps
failing is retried with exponential backoff up to ``dispatch.max_attempts``, then the
delivery is ``dead`` (kept, visible in ``radtriage status``) and the study ``failed``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Callable, Mapping

from sqlalchemy import case, func, select, update

from daemon import metrics
from daemon.config import DispatchConfig
from daemon.logs import study_logger
from db import Database, Delivery, DeliveryState, Event, EventKind, Study, StudyResult, StudyState, utcnow
from dicom_io.destinations import Destination, Origin
from dicom_io.errors import SendError

log = logging.getLogger(__name__)

_RANK = case({"HIGH": 0, "ELEVATED": 1}, value=Delivery.priority, else_=2)


def backoff_s(attempts: int, initial_s: float, max_s: float) -> float:
    """Wait after the ``attempts``-th failure: initial, 2x, 4x, ... capped at ``max_s``."""
    return min(max_s, initial_s * (2 ** max(0, attempts - 1)))


class Dispatcher:
    def __init__(self, db: Database, destinations: Mapping[str, Destination], config: DispatchConfig,
                 storage_root, *, clock: Callable[[], dt.datetime] = utcnow) -> None:  # type: ignore[no-untyped-def]
        self.db = db
        self.destinations = dict(destinations)
        self.config = config
        self.root = storage_root
        self.clock = clock
        self.stopping = threading.Event()

    def _claim(self, skip: set[str] = frozenset()) -> tuple[int, str, str, str, Origin | None] | None:  # type: ignore[assignment]
        now = self.clock()
        with self.db.session() as s:
            query = (select(Delivery)
                     .join(StudyResult, Delivery.result_id == StudyResult.id)
                     .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now,
                            StudyResult.superseded.is_(False)))
            if skip:
                query = query.where(Delivery.destination.notin_(sorted(skip)))
            d = s.scalars(
                query.order_by(_RANK, Delivery.created_at, Delivery.id)
                .limit(1).with_for_update(skip_locked=True)
            ).first()
            if d is None:
                return None
            d.state = DeliveryState.SENDING
            study = d.result.study
            assoc = study.last_association
            origin = (Origin(ae_title=study.calling_ae, host=assoc.peer_host)
                      if study.calling_ae and assoc is not None else None)
            return d.id, d.destination, d.path, study.study_instance_uid, origin

    def run_due(self, limit: int = 100) -> int:
        """Send what is due now, one after another; return how many were attempted.

        Stops early once :attr:`stopping` is set, so shutdown waits for one send at most. A
        destination that fails is not tried again in this run (its other deliveries wait for
        their own retry time instead of each waiting out a timeout now).
        """
        attempted = 0
        failed: set[str] = set()
        while attempted < limit and not self.stopping.is_set():
            claimed = self._claim(failed)
            if claimed is None:
                break
            attempted += 1
            if not self._attempt(*claimed):
                failed.add(claimed[1])
        return attempted

    def _attempt(self, delivery_id: int, dest_name: str, relpath: str, study_uid: str,
                 origin: Origin | None = None) -> bool:
        """Send one claimed delivery and record the outcome; return whether it was delivered."""
        slog = study_logger(log, study_uid)
        dest = self.destinations.get(dest_name)
        error: str | None = None
        if dest is None:
            error = f"destination {dest_name!r} is no longer configured"
        else:
            try:
                dest.send(self.root / relpath, origin=origin)
            except SendError as exc:
                error = str(exc)
            except Exception as exc:  # a destination's bug is a failed attempt, retried like any
                slog.exception("unexpected error sending to %s", dest_name)
                error = f"{type(exc).__name__}: {exc}"
        now = self.clock()
        with self.db.session() as s:
            d = s.get(Delivery, delivery_id, with_for_update=True)
            if d is None:  # the study was purged while it was being sent
                slog.warning("delivery %s to %s ended after its study was purged", delivery_id,
                             dest_name)
                return error is None
            d.attempts += 1
            study = d.result.study
            if error is None:
                d.state = DeliveryState.DELIVERED
                d.delivered_at = now
                d.last_error = None
                s.add(Event(at=now, study_id=study.id, kind=EventKind.SENT,
                            detail=f"{d.object_kind} {d.sop_instance_uid} to {dest_name} "
                                   f"(attempt {d.attempts})"))
                slog.info("%s sent to %s (attempt %d)", d.object_kind, dest_name, d.attempts)
                metrics.DELIVERIES.labels("delivered").inc()
                self._destination_is_back(s, dest_name, now)
                self._maybe_delivered(s, d.result, now)
                return True
            d.last_error = error[:2000]
            metrics.ERRORS.labels("delivery").inc()
            s.add(Event(at=now, study_id=study.id, kind=EventKind.SEND_FAILED,
                        detail=f"{d.object_kind} to {dest_name}, attempt {d.attempts}: {error}"[:2000]))
            if d.result.superseded:
                d.state = DeliveryState.SUPERSEDED  # a newer result replaced it meanwhile
            elif d.attempts >= self.config.max_attempts:
                d.state = DeliveryState.DEAD
                metrics.DELIVERIES.labels("dead").inc()
                # only the delivery of the study's current revision may fail the study
                if study.state == StudyState.DISPATCHING and d.result.study_revision == study.revision:
                    study.state = StudyState.FAILED
                    study.state_reason = f"delivery to {dest_name} gave up after {d.attempts} attempts: {error}"
                slog.error("giving up on %s to %s after %d attempts: %s", d.object_kind, dest_name,
                           d.attempts, error)
            else:
                wait = backoff_s(d.attempts, self.config.backoff_initial_s, self.config.backoff_max_s)
                d.state = DeliveryState.PENDING
                d.next_attempt_at = now + dt.timedelta(seconds=wait)
                metrics.DELIVERIES.labels("failed").inc()
                slog.warning("%s to %s failed (attempt %d), retry in %.0f s: %s", d.object_kind,
                             dest_name, d.attempts, wait, error)
        return False

    @staticmethod
    def _destination_is_back(s, dest_name: str, now: dt.datetime) -> None:  # type: ignore[no-untyped-def]
        """A send got through: the destination is up, so whatever waits out a backoff for it is
        due now and goes out in priority order, not in the order the backoffs happen to end."""
        n = s.execute(update(Delivery).where(
            Delivery.destination == dest_name, Delivery.state == DeliveryState.PENDING,
            Delivery.next_attempt_at > now).values(next_attempt_at=now)).rowcount
        if n:
            log.info("%s is reachable again: %d queued delivery(ies) due now, most urgent first",
                     dest_name, n)

    @staticmethod
    def _maybe_delivered(s, result: StudyResult, now: dt.datetime) -> None:  # type: ignore[no-untyped-def]
        if result.superseded:
            return
        outstanding = s.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.result_id == result.id, Delivery.state != DeliveryState.DELIVERED))
        study: Study = result.study
        if outstanding == 0 and study.state == StudyState.DISPATCHING \
                and result.study_revision == study.revision:
            study.state = StudyState.DELIVERED
            study.delivered_at = now
