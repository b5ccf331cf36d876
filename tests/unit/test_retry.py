"""Issue 17, finding 10: a full disk failed every waiting study for good.

All 15 studies waiting to be scored failed when their outputs could not be written (StorageFull)
and were never tried again once space was freed. A study whose outputs cannot be written for a
cause that passes now goes back to ``complete`` and is scored again after a backoff
(``scoring.retry_initial_s`` doubling up to ``retry_max_s``); any other error still fails it.
The full disk is the real one as far as radtriage can tell: ``os.fsync`` answers ENOSPC, as in
tests/unit/test_storage.py.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import shutil
from pathlib import Path

import pydicom
from sqlalchemy import func, select

from daemon.completion import sweep
from daemon.config import parse_config
from daemon.retry import retry_delay
from daemon.worker import ScoringWorker, StudyScorer
from db import Delivery, Event, EventKind, Instance, Study, StudyResult, StudyState
from dicom_io.storage import instance_relpath
from tests.conftest import write_study
from tests.fakes import FixedScorer
from tests.migrations import check_migration_keeps_rows

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)


def _config(tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_config({
        "storage": {"path": str(tmp_path / "storage")},
        "decoding": {"workers": 1},
        "report": {"summary": "off"},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
    }, base=tmp_path, environ={})


def _complete_study(tmp_path: Path, database, n: int) -> int:  # type: ignore[no-untyped-def]
    """A complete one-view study, stored as the receiver stores it."""
    [f] = write_study(tmp_path / "in" / str(n), views=1, rows=32, columns=32, seed=n)
    ds = pydicom.dcmread(f)
    rel = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    (tmp_path / "storage" / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(f, tmp_path / "storage" / rel)
    with database.session() as s:
        study = Study(study_instance_uid=ds.StudyInstanceUID, state=StudyState.COMPLETE,
                      first_received_at=NOW, last_received_at=NOW,
                      completed_at=NOW + dt.timedelta(seconds=n), revision=1)
        s.add(study)
        s.flush()
        s.add(Instance(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID,
                       sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                       transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=rel,
                       size_bytes=f.stat().st_size, received_at=NOW))
        return study.id


class FullDisk:
    """``os.fsync`` answering ENOSPC while ``full``: every durable write fails as on a full
    volume, and nothing else changes."""

    def __init__(self, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        self.full = True
        real = os.fsync

        def fsync(fd: int) -> None:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def _drain(worker: ScoringWorker) -> int:
    n = 0
    while worker.run_once():
        n += 1
    return n


def test_finding_10_fifteen_studies_on_a_full_disk_are_all_scored_once_space_is_freed(
        tmp_path: Path, database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ids = [_complete_study(tmp_path, database, n) for n in range(15)]
    disk = FullDisk(monkeypatch)
    clock = {"now": NOW}
    scorer = StudyScorer(_config(tmp_path), database, FixedScorer(0.9), clock=lambda: clock["now"])
    worker = ScoringWorker(scorer)
    try:
        assert _drain(worker) == 15  # each tried once, none written
        with database.session() as s:
            studies = s.scalars(select(Study).order_by(Study.id)).all()
            assert [st.state for st in studies] == [StudyState.COMPLETE] * 15  # not failed
            assert all("StorageFull" in (st.state_reason or "") for st in studies)
            assert s.scalar(select(func.count()).select_from(StudyResult)) == 0
            assert s.scalar(select(func.count()).select_from(Event).where(
                Event.kind == EventKind.RETRY)) == 15
        assert not list((tmp_path / "storage" / "outputs").rglob("*.dcm"))  # nothing half-made
        assert _drain(worker) == 0  # not before their retry time

        clock["now"] += dt.timedelta(minutes=5)  # still full: tried again, and waits longer
        assert _drain(worker) == 15
        with database.session() as s:
            assert {st.retries for st in s.scalars(select(Study))} == {2}

        disk.full = False  # space freed
        clock["now"] += dt.timedelta(minutes=10)
        assert _drain(worker) == 15
    finally:
        scorer.close()
    with database.session() as s:
        for study_id in ids:
            study = s.get(Study, study_id)
            assert study.state == StudyState.DISPATCHING and study.state_reason is None
            assert study.retry_at is None and study.retries == 0
            [result] = study.results
            assert (tmp_path / "storage" / result.sr_path).is_file()
        assert s.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.object_kind == "SR")) == 15


def test_an_error_that_does_not_pass_still_fails_the_study(tmp_path: Path, database,
                                                           monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _complete_study(tmp_path, database, 1)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr("daemon.worker.make_products", broken)
    scorer = StudyScorer(_config(tmp_path), database, FixedScorer(0.9), clock=lambda: NOW)
    try:
        assert _drain(ScoringWorker(scorer)) == 1
    finally:
        scorer.close()
    with database.session() as s:
        study = s.scalar(select(Study))
        assert study.state == StudyState.FAILED and study.retry_at is None
        assert study.state_reason.startswith("RuntimeError")


def test_an_io_error_other_than_a_full_volume_is_retried_a_few_times_then_fails(
        tmp_path: Path, database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A read-only volume (EROFS) does not pass by itself: tried MAX_OTHER_RETRIES times more,
    then failed with the reason, never scored again and again for ever."""
    from daemon.retry import MAX_OTHER_RETRIES

    _complete_study(tmp_path, database, 1)
    real = os.fsync

    def fsync(fd: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "fsync", fsync)
    clock = {"now": NOW}
    scorer = StudyScorer(_config(tmp_path), database, FixedScorer(0.9), clock=lambda: clock["now"])
    tries = 0
    try:
        for _ in range(MAX_OTHER_RETRIES + 3):
            tries += _drain(ScoringWorker(scorer))
            clock["now"] += dt.timedelta(hours=1)
    finally:
        scorer.close()
        monkeypatch.setattr(os, "fsync", real)
    assert tries == MAX_OTHER_RETRIES + 1
    with database.session() as s:
        study = s.scalar(select(Study))
        assert study.state == StudyState.FAILED
        assert "StorageError" in study.state_reason and "given up after 6 tries" in study.state_reason


def test_retry_delay_doubles_up_to_its_maximum() -> None:
    assert [retry_delay(n, 30, 600) for n in range(7)] == [30, 60, 120, 240, 480, 600, 600]
    assert retry_delay(10_000, 30, 600) == 600


def test_a_late_instance_makes_a_waiting_study_due_at_once(tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    study_id = _complete_study(tmp_path, database, 1)
    with database.session() as s:  # waiting for a retry, then re-opened by a late instance
        study = s.get(Study, study_id)
        study.state, study.revision = StudyState.RECEIVING, 2
        study.retry_at, study.retries = NOW + dt.timedelta(hours=1), 3
    sweep(database, NOW + dt.timedelta(minutes=1), release_grace_s=0.5, stable_s=30)
    with database.session() as s:
        study = s.get(Study, study_id)
        assert study.state == StudyState.COMPLETE and study.retry_at is None and study.retries == 0


def test_migration_0007_keeps_every_study_and_instance(db_url: str) -> None:
    """Adding study.retry_at must not re-create ``study`` (SQLite would cascade-delete every
    instance)."""
    from db import Database

    def check(db: Database) -> None:
        with db.session() as s:
            study = s.scalar(select(Study))
            assert study.retry_at is None and study.retries == 0
            assert s.scalar(select(Instance)).study_id == study.id

    check_migration_keeps_rows(db_url, "0006", state="complete", path="a/b/c.dcm",
                               received_at=NOW, check=check)


def test_a_study_failed_by_a_destination_is_sent_again_once_it_accepts_objects(
        tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    """Destination-side: a delivery that gave up fails its study; once the destination has
    accepted another object the study goes back to dispatching, and is delivered."""
    from daemon.dispatch import Dispatcher
    from daemon.retry import revive_deliveries
    from dicom_io.destinations import FakeDestination

    config = _config(tmp_path).model_copy(update={"dispatch": parse_config(
        {"dispatch": {"max_attempts": 2, "backoff_initial_s": 1, "backoff_max_s": 1}},
        base=tmp_path, environ={}).dispatch})
    clock = {"now": NOW}
    pacs = FakeDestination(name="pacs", down=True)
    dispatcher = Dispatcher(database, {"pacs": pacs}, config.dispatch, tmp_path / "storage",
                            clock=lambda: clock["now"])
    scorer = StudyScorer(config, database, FixedScorer(0.9), clock=lambda: clock["now"])

    def revive() -> list[int]:
        return revive_deliveries(database, clock["now"], max_attempts=2, initial_s=30, max_s=600)

    try:
        first, second = (_complete_study(tmp_path, database, n) for n in (1, 2))
        _drain(ScoringWorker(scorer))
        for _ in range(4):  # the PACS is down (one try a run): both SRs give up after two
            dispatcher.run_due()
            clock["now"] += dt.timedelta(seconds=2)
        with database.session() as s:
            assert {s.get(Study, i).state for i in (first, second)} == {StudyState.FAILED}
        assert revive() == []  # the PACS has accepted nothing since: still failed

        pacs.down = False  # the PACS is back; a new study's SR gets through
        third = _complete_study(tmp_path, database, 3)
        _drain(ScoringWorker(scorer))
        clock["now"] += dt.timedelta(seconds=2)
        dispatcher.run_due()
        with database.session() as s:
            assert s.get(Study, third).state == StudyState.DELIVERED
        assert revive() == [first, second]
        assert revive() == []  # once: they are dispatching now
        dispatcher.run_due()
    finally:
        scorer.close()
    with database.session() as s:
        assert {s.get(Study, i).state for i in (first, second)} == {StudyState.DELIVERED}
        assert len(s.scalars(select(Event).where(Event.kind == EventKind.RETRY)).all()) == 2
    assert len(pacs.sent) == 3


def test_an_object_the_destination_always_refuses_is_revived_once_not_forever(
        tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    """The review of issue 17 found a study revived every ``retry_max_s`` for ever when the
    destination refuses one object for good (a SOP class it does not take) while it accepts
    others: each delivery is given one more attempt once, then its study stays failed."""
    from daemon.dispatch import Dispatcher
    from daemon.retry import revive_deliveries
    from dicom_io.destinations import FakeDestination
    from dicom_io.errors import SendError

    class Picky(FakeDestination):
        """Refuses the first study's objects (0xA900 for ever), stores every other."""

        refused: set[str] = set()

        def send(self, path, *, origin=None):  # type: ignore[no-untyped-def]
            if any(part in self.refused for part in Path(path).parts):
                raise SendError("pacs: refused with 0xA900 (SOP class not supported)")
            super().send(path, origin=origin)

    config = _config(tmp_path).model_copy(update={"dispatch": parse_config(
        {"dispatch": {"max_attempts": 2, "backoff_initial_s": 1, "backoff_max_s": 1}},
        base=tmp_path, environ={}).dispatch})
    clock = {"now": NOW}
    pacs = Picky(name="pacs")
    dispatcher = Dispatcher(database, {"pacs": pacs}, config.dispatch, tmp_path / "storage",
                            clock=lambda: clock["now"])
    scorer = StudyScorer(config, database, FixedScorer(0.9), clock=lambda: clock["now"])
    try:
        refused = _complete_study(tmp_path, database, 1)
        with database.session() as s:
            Picky.refused = {s.get(Study, refused).study_instance_uid}
        revivals = 0
        for n in range(2, 12):  # ten cycles, each with another study the PACS accepts
            _complete_study(tmp_path, database, n)
            _drain(ScoringWorker(scorer))
            for _ in range(3):
                dispatcher.run_due()
                clock["now"] += dt.timedelta(seconds=2)
            clock["now"] += dt.timedelta(seconds=700)  # past retry_max_s
            revivals += len(revive_deliveries(database, clock["now"], max_attempts=2,
                                              initial_s=30, max_s=600))
    finally:
        scorer.close()
    assert revivals == 1
    with database.session() as s:
        assert s.get(Study, refused).state == StudyState.FAILED
        assert s.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.revived.is_(True))) == 1
    assert len(pacs.sent) == 10
