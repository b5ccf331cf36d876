"""Data hygiene: stored pixel data deleted after ``storage.retention_days``; one study purged.

**Retention** (:func:`apply_retention`; the daemon runs it every ``storage.retention_interval_s``
when ``storage.retention_days`` > 0, ``radtriage retention`` runs it once). It deletes the stored
file of every instance of a *settled* study (:data:`SETTLED`: scored, delivered, failed,
rejected) whose last instance arrived more than ``retention_days`` ago, and sets the instance's
``deleted_at``. It keeps the instance row (path and size, for the record), the results with
their image scores and heatmaps, the objects radtriage made (``outputs/<study>/`` and the
``output_object`` rows: they are the results as the PACS has them, and they carry the patient
module copied from the study), the deliveries and the audit trail, to which it adds one
``pixel_data_deleted`` event per study. A file is deleted *before* its row is marked, with the
study row locked: a crash in between leaves a row whose file is gone, which the next pass counts
as missing and marks; a file that cannot be deleted is logged, its row left unmarked, and the
next pass tries again. Studies and instances are read in batches, so a backlog of years does
not have to fit in memory.

**Purge** (:func:`purge_study`, ``radtriage purge``): everything radtriage holds of one study,
on request (a patient's right to erasure, a study sent for the wrong patient). Its rows go in
one transaction (image scores, output objects, deliveries, results, events, instances, the
study), and one ``purged`` event without a study is added that names the study only by
:func:`study_ref`, a SHA-256 of its Study Instance UID: whoever holds the UID can find the
record, the record does not give the UID away. The files go *after* the commit, so no row ever
points at a deleted file; a crash in between leaves files that no row names, all under
``<storage>/<study>/`` and ``<storage>/outputs/<study>/``, which purging the same UID again
removes. ``quarantine/`` is not indexed by study and is left alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import and_, delete, exists, or_, select

from daemon.logs import study_logger
from db import (
    Database,
    Delivery,
    Event,
    EventKind,
    ImageScore,
    Instance,
    OutputObject,
    Study,
    StudyResult,
    StudyState,
    utcnow,
)
from dicom_io.errors import InvalidInstance
from dicom_io.storage import OUTPUTS_DIR, check_uid

log = logging.getLogger(__name__)

#: states in which nothing more happens to a study unless a late instance re-opens it
SETTLED = (StudyState.SCORED, StudyState.DELIVERED, StudyState.FAILED, StudyState.REJECTED)

#: why a study in each busy state is not purged without ``force``
BUSY = {
    StudyState.RECEIVING: "it is being received: instances still arriving would create it again",
    StudyState.COMPLETE: "it is waiting to be scored",
    StudyState.SCORING: "it is being scored: the result being made would be discarded",
    StudyState.DISPATCHING: "its results are being delivered: a send in progress would fail",
}

#: rows read per query: studies per batch, and instances per transaction within a study
BATCH = 500


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


# -- retention -------------------------------------------------------------------------------


@dataclass
class RetentionReport:
    """What one retention pass did (or, with ``dry_run``, would do)."""

    cutoff: dt.datetime
    dry_run: bool = False
    studies: int = 0    # studies with at least one instance deleted or marked
    deleted: int = 0    # files deleted
    missing: int = 0    # files already gone; their rows marked
    bytes: int = 0      # of the files deleted
    errors: int = 0     # files that could not be deleted; retried at the next pass

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        text = (f"{self.studies} study(ies) received before {self.cutoff:%Y-%m-%d %H:%M} UTC: "
                f"{verb} {self.deleted} instance file(s) ({_mb(self.bytes)}), "
                f"{self.missing} already missing")
        if self.errors:
            text += f", {self.errors} could not be deleted (retried at the next pass)"
        return text


def _due(cutoff: dt.datetime):  # type: ignore[no-untyped-def]
    return and_(Study.state.in_(SETTLED), Study.last_received_at < cutoff,
                exists().where(Instance.study_id == Study.id, Instance.stored))


def apply_retention(db: Database, root: Path, now: dt.datetime, *, days: float,
                    dry_run: bool = False, batch_size: int = BATCH,
                    should_stop: Callable[[], bool] | None = None) -> RetentionReport:
    """Delete the stored files of settled studies last received more than ``days`` before
    ``now``; return what was done. Idempotent. ``should_stop`` is asked between studies.

    Raises ValueError for ``days`` <= 0 (0 in the config means: keep forever, never call this)
    and SQLAlchemyError when the database fails (what was committed stays done).
    """
    if days <= 0:
        raise ValueError(f"retention needs days > 0, not {days}")
    cutoff = now - dt.timedelta(days=days)
    report = RetentionReport(cutoff=cutoff, dry_run=dry_run)
    after = 0
    while True:
        with db.session() as s:
            ids = s.scalars(select(Study.id).where(_due(cutoff), Study.id > after)
                            .order_by(Study.id).limit(batch_size)).all()
        for study_id in ids:
            if should_stop is not None and should_stop():
                return report
            _retain_study(db, root, study_id, cutoff, now, report, dry_run, batch_size,
                          why=f"storage.retention_days {days:g}")
        if len(ids) < batch_size:
            return report
        after = ids[-1]


def _retain_study(db: Database, root: Path, study_id: int, cutoff: dt.datetime, now: dt.datetime,
                  report: RetentionReport, dry_run: bool, batch_size: int, *, why: str) -> None:
    deleted = missing = size = errors = 0
    after = 0
    slog = None
    last = False
    while not last:
        with db.session() as s:
            # the lock keeps the receiver from re-opening the study while its files go
            study = s.get(Study, study_id, with_for_update=True)
            if study is None:
                break  # purged meanwhile
            slog = study_logger(log, study.study_instance_uid)
            still_due = study.state in SETTLED and study.last_received_at < cutoff
            rows = s.scalars(select(Instance).where(
                Instance.study_id == study_id, Instance.stored, Instance.id > after)
                .order_by(Instance.id).limit(batch_size)).all() if still_due else []
            for inst in rows:
                path = root / inst.path
                if dry_run:
                    if os.path.lexists(path):
                        deleted, size = deleted + 1, size + inst.size_bytes
                    else:
                        missing += 1
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    missing += 1
                except OSError as exc:
                    errors += 1
                    slog.warning("retention cannot delete instance %s: %s; retried at the next "
                                 "pass", inst.sop_instance_uid, exc.strerror or exc)
                    continue
                else:
                    deleted, size = deleted + 1, size + inst.size_bytes
                inst.deleted_at = now
            last = len(rows) < batch_size
            if last and not dry_run and (deleted or missing):
                s.add(Event(at=now, study_id=study_id, kind=EventKind.PIXEL_DATA_DELETED,
                            detail=f"retention ({why}): {deleted} instance file(s) "
                                   f"deleted ({size} bytes), {missing} already missing"
                                   + (f", {errors} could not be deleted" if errors else "")))
        if rows:
            after = rows[-1].id
    if deleted or missing:
        report.studies += 1
    report.deleted += deleted
    report.missing += missing
    report.bytes += size
    report.errors += errors
    if slog is not None and (deleted or missing or errors):
        slog.info("retention %s %d instance file(s) (%d bytes), %d already missing, %d errors",
                  "would delete" if dry_run else "deleted", deleted, size, missing, errors)


# -- purge -----------------------------------------------------------------------------------


class PurgeError(Exception):
    """A study cannot be purged; the message says why."""


class NotAStudyUID(PurgeError):
    """What was given is not a Study Instance UID."""


class StudyNotFound(PurgeError):
    """Neither the database nor the storage holds anything of the study."""


class StudyBusy(PurgeError):
    """The study is being received, scored or delivered, and ``force`` was not given."""


def study_ref(study_uid: str) -> str:
    """How the audit trail names a purged study: ``sha256:`` and the hex digest of its UID."""
    return "sha256:" + hashlib.sha256(study_uid.encode("ascii")).hexdigest()


@dataclass
class PurgeReport:
    study_uid: str
    ref: str                 # what the ``purged`` event names it by (:func:`study_ref`)
    state: str | None        # the state it was in; None when only leftover files were found
    forced: bool = False
    instances: int = 0
    results: int = 0
    image_scores: int = 0
    outputs: int = 0
    deliveries: int = 0
    events: int = 0
    files: int = 0           # files deleted
    bytes: int = 0
    #: files or folders that could not be deleted, relative to the storage root, with the reason;
    #: purging the same UID again finishes the job
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.state is None:
            head = f"study {self.study_uid}: no database record; leftover files deleted"
        else:
            head = (f"purged study {self.study_uid} (was {self.state}{', forced' if self.forced else ''}): "
                    f"{self.instances} instance(s), {self.results} result(s), "
                    f"{self.outputs} output object(s), {self.deliveries} delivery(ies), "
                    f"{self.events} event(s)")
        return f"{head}; {self.files} file(s) ({_mb(self.bytes)}) deleted"


def purge_study(db: Database, root: Path, study_uid: str, *, force: bool = False,
                now: dt.datetime | None = None) -> PurgeReport:
    """Delete every row and file radtriage holds of one study; return what went.

    Raises NotAStudyUID, StudyNotFound, StudyBusy (a study in a :data:`BUSY` state without
    ``force``), and SQLAlchemyError when the database fails (then nothing was deleted). Files
    that cannot be deleted after the commit are listed in :attr:`PurgeReport.errors`.
    """
    try:
        uid = check_uid(study_uid, "Study Instance UID")
    except InvalidInstance as exc:
        raise NotAStudyUID(str(exc)) from exc
    now = now or utcnow()
    ref = study_ref(uid)
    folders = [root / uid, root / OUTPUTS_DIR / uid]
    files: set[str] = set()
    with db.session() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == uid)
                          .with_for_update()).first()
        if study is None:
            if not any(os.path.lexists(f) for f in folders):
                raise StudyNotFound(f"no study with Study Instance UID {uid} in the database "
                                    f"({db.describe()}) or under {root}")
            report = PurgeReport(uid, ref, state=None)
            s.add(Event(at=now, study_id=None, kind=EventKind.PURGED,
                        detail=f"study {ref}: leftover files of an earlier purge deleted on request"))
        else:
            if study.state in BUSY and not force:
                raise StudyBusy(f"study {uid} is {study.state.value}: {BUSY[study.state]}. Wait "
                                "until it is scored or delivered, or purge it anyway with --force")
            report = PurgeReport(uid, ref, state=study.state.value,
                                 forced=force and study.state in BUSY)
            files = _purge_rows(s, study, report)
            s.add(Event(at=now, study_id=None, kind=EventKind.PURGED, detail=(
                f"study {ref} purged on request"
                + (f" while {report.state} (forced)" if report.forced else "")
                + f": {report.instances} instance(s), {report.results} result(s), "
                  f"{report.outputs} output object(s), {report.deliveries} delivery(ies), "
                  f"{report.events} event(s)")))
    # committed: from here on no row names these files
    for rel in sorted(files):
        _remove(root, root / rel, report)
    for folder in folders:
        _remove_tree(root, folder, report)
    log.info("purged study %s on request: %d file(s) deleted, %d could not be", ref,
             report.files, len(report.errors))
    return report


def _purge_rows(s, study: Study, report: PurgeReport) -> set[str]:  # type: ignore[no-untyped-def]
    """Delete the study's rows, children first; return the files they named."""
    result_ids = s.scalars(select(StudyResult.id).where(StudyResult.study_id == study.id)).all()
    instance_ids = select(Instance.id).where(Instance.study_id == study.id)
    files = set(s.scalars(select(Instance.path).where(Instance.study_id == study.id)).all())
    files |= set(s.scalars(select(OutputObject.path).where(OutputObject.result_id.in_(result_ids))).all())
    files |= {p for p in s.scalars(select(StudyResult.sr_path).where(
        StudyResult.study_id == study.id)).all() if p}
    files |= set(s.scalars(select(Delivery.path).where(Delivery.result_id.in_(result_ids))).all())

    def gone(stmt) -> int:  # type: ignore[no-untyped-def]  # nothing of these is loaded
        return int(s.execute(stmt.execution_options(synchronize_session=False)).rowcount)

    report.image_scores = gone(delete(ImageScore).where(or_(
        ImageScore.result_id.in_(result_ids), ImageScore.instance_id.in_(instance_ids))))
    report.outputs = gone(delete(OutputObject).where(OutputObject.result_id.in_(result_ids)))
    report.deliveries = gone(delete(Delivery).where(Delivery.result_id.in_(result_ids)))
    report.results = gone(delete(StudyResult).where(StudyResult.study_id == study.id))
    report.events = gone(delete(Event).where(Event.study_id == study.id))
    report.instances = gone(delete(Instance).where(Instance.study_id == study.id))
    gone(delete(Study).where(Study.id == study.id))
    return files


def _remove(root: Path, path: Path, report: PurgeReport) -> None:
    try:
        size = path.lstat().st_size
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        report.errors.append(f"{path.relative_to(root)}: {exc.strerror or exc}")
        return
    report.files += 1
    report.bytes += size


def _remove_tree(root: Path, folder: Path, report: PurgeReport) -> None:
    """Delete ``folder`` and everything in it (symbolic links are removed, not followed)."""
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        _remove(root, folder, report)
        return
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            _remove(root, here / name, report)
        for name in dirnames:
            if (here / name).is_symlink():
                _remove(root, here / name, report)
        try:
            here.rmdir()
        except FileNotFoundError:
            continue
        except OSError as exc:  # not empty: a file in it could not be deleted, or one arrived
            report.errors.append(f"{here.relative_to(root)}/: {exc.strerror or exc}")

