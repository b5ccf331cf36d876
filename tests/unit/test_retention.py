"""daemon.retention: stored pixel data deleted after storage.retention_days; one study purged."""
from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from daemon.config import parse_config
from daemon.retention import (
    NotAStudyUID,
    StudyBusy,
    StudyNotFound,
    apply_retention,
    purge_study,
    study_ref,
)
from daemon.worker import StudyScorer
from db import (
    Database,
    Delivery,
    DeliveryState,
    Event,
    EventKind,
    ImageScore,
    Instance,
    OutputObject,
    Study,
    StudyResult,
    StudyState,
)
from dicom_io.storage import instance_relpath, output_relpath
from tests.conftest import free_port, write_study
from tests.fakes import FixedScorer
from tests.migrations import check_migration_keeps_rows

NOW = dt.datetime(2026, 12, 9, 12, 0, tzinfo=dt.timezone.utc)
OLD = NOW - dt.timedelta(days=40)
YOUNG = NOW - dt.timedelta(days=10)
_serial = iter(range(1, 1_000_000))


def make_study(database: Database, root: Path, *, state: StudyState = StudyState.DELIVERED,
               received: dt.datetime = OLD, views: int = 2, size: int = 100) -> str:
    """A study with ``views`` stored instances of ``size`` bytes each, one result with image
    scores (and heatmaps), an SR output on disk, a delivery and events; return its UID."""
    n = next(_serial)
    uid, series = f"1.2.826.0.1.{n}", f"1.2.826.0.1.{n}.1"
    with database.session() as s:
        study = Study(study_instance_uid=uid, state=state, first_received_at=received,
                      last_received_at=received, revision=1)
        s.add(study)
        s.flush()
        instances = []
        for v in range(1, views + 1):
            rel = instance_relpath(uid, series, f"{series}.{v}")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"D" * size)
            inst = Instance(study_id=study.id, series_instance_uid=series,
                            sop_instance_uid=f"{series}.{v}", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                            transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CR", path=rel,
                            size_bytes=size, received_at=received)
            s.add(inst)
            instances.append(inst)
        s.add(Event(at=received, study_id=study.id, kind=EventKind.RECEIVED, detail="instance"))
        s.flush()
        if state in (StudyState.RECEIVING, StudyState.COMPLETE):
            return uid
        result = StudyResult(study_id=study.id, study_revision=1, created_at=received, analysed=True,
                             probability=0.8, abnormal=True, priority="HIGH", threshold=0.5,
                             model_name="m", model_version="1", superseded=False,
                             sr_sop_instance_uid=f"{series}.99", sr_path=output_relpath(uid, f"{series}.99"))
        s.add(result)
        s.flush()
        for inst in instances:
            s.add(ImageScore(result_id=result.id, instance_id=inst.id, probability=0.8,
                             heatmap=b"heatmap", heatmap_method="cam"))
        sr = root / result.sr_path
        sr.parent.mkdir(parents=True, exist_ok=True)
        sr.write_bytes(b"SR")
        s.add(OutputObject(result_id=result.id, kind="SR", uid=f"{series}.99", path=result.sr_path))
        s.add(Delivery(result_id=result.id, destination="pacs", object_kind="SR",
                       sop_instance_uid=f"{series}.99", path=result.sr_path, priority="HIGH",
                       state=DeliveryState.DELIVERED, attempts=1, next_attempt_at=received,
                       created_at=received))
        s.add(Event(at=received, study_id=study.id, kind=EventKind.SCORED, detail="scored"))
    return uid


def _instances(database: Database, uid: str) -> list[Instance]:
    with database.session() as s:
        return list(s.scalars(select(Instance).join(Study).where(Study.study_instance_uid == uid)
                              .order_by(Instance.id)).all())


def _events(database: Database, uid: str, kind: EventKind | None = None) -> list[Event]:
    with database.session() as s:
        q = select(Event).join(Study).where(Study.study_instance_uid == uid)
        if kind is not None:
            q = q.where(Event.kind == kind)
        return list(s.scalars(q.order_by(Event.id)).all())


def _count(database: Database, model) -> int:  # type: ignore[no-untyped-def]
    with database.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


# -- retention -----------------------------------------------------------------------------------


def test_an_old_settled_study_loses_its_pixel_data_and_keeps_its_results(tmp_path, database):
    root = tmp_path / "storage"
    uid = make_study(database, root, size=123)
    report = apply_retention(database, root, NOW, days=30)
    assert (report.studies, report.deleted, report.missing, report.bytes, report.errors) == (1, 2, 0, 246, 0)
    assert "deleted 2 instance file(s)" in report.summary()
    for inst in _instances(database, uid):
        assert not (root / inst.path).exists()
        assert inst.deleted_at == NOW and not inst.stored
        assert inst.path.startswith(f"{uid}/")  # kept for the record
    with database.session() as s:
        result = s.scalar(select(StudyResult))
        assert result.probability == 0.8 and not result.superseded
        assert [sc.heatmap for sc in result.scores] == [b"heatmap", b"heatmap"]
        assert [o.kind for o in result.outputs] == ["SR"]
        assert (root / result.outputs[0].path).read_bytes() == b"SR"  # the outputs are results
        assert [d.state for d in result.deliveries] == [DeliveryState.DELIVERED]
        assert s.scalar(select(Study)).state == StudyState.DELIVERED
    kinds = [e.kind for e in _events(database, uid)]
    assert kinds == [EventKind.RECEIVED, EventKind.SCORED, EventKind.PIXEL_DATA_DELETED]
    [event] = _events(database, uid, EventKind.PIXEL_DATA_DELETED)
    assert event.at == NOW
    assert "2 instance file(s) deleted (246 bytes), 0 already missing" in event.detail


def test_young_and_unsettled_studies_keep_everything(tmp_path, database):
    root = tmp_path / "storage"
    kept = [make_study(database, root, received=YOUNG)]
    kept += [make_study(database, root, state=state) for state in
             (StudyState.RECEIVING, StudyState.COMPLETE, StudyState.SCORING, StudyState.DISPATCHING)]
    gone = [make_study(database, root, state=state) for state in
            (StudyState.SCORED, StudyState.FAILED, StudyState.REJECTED)]
    report = apply_retention(database, root, NOW, days=30)
    assert (report.studies, report.deleted) == (3, 6)
    for uid in kept:
        assert all((root / i.path).is_file() and i.deleted_at is None for i in _instances(database, uid))
        assert _events(database, uid, EventKind.PIXEL_DATA_DELETED) == []
    for uid in gone:
        assert not any((root / i.path).exists() for i in _instances(database, uid))
    # the young one goes once it is old enough
    report = apply_retention(database, root, NOW + dt.timedelta(days=21), days=30)
    assert (report.studies, report.deleted) == (1, 2)


def test_a_second_pass_changes_nothing(tmp_path, database):
    root = tmp_path / "storage"
    uid = make_study(database, root)
    apply_retention(database, root, NOW, days=30)
    again = apply_retention(database, root, NOW + dt.timedelta(hours=1), days=30)
    assert (again.studies, again.deleted, again.missing, again.errors) == (0, 0, 0, 0)
    assert len(_events(database, uid, EventKind.PIXEL_DATA_DELETED)) == 1
    assert all(i.deleted_at == NOW for i in _instances(database, uid))


def test_a_file_already_missing_is_counted_and_marked(tmp_path, database):
    root = tmp_path / "storage"
    uid = make_study(database, root)
    first = _instances(database, uid)[0]
    (root / first.path).unlink()
    report = apply_retention(database, root, NOW, days=30)
    assert (report.deleted, report.missing, report.errors, report.bytes) == (1, 1, 0, 100)
    assert all(i.deleted_at == NOW for i in _instances(database, uid))
    [event] = _events(database, uid, EventKind.PIXEL_DATA_DELETED)
    assert "1 already missing" in event.detail


def refuse_to_delete(monkeypatch: pytest.MonkeyPatch, stuck: Path):  # type: ignore[no-untyped-def]
    """os.unlink fails on ``stuck`` with EACCES, as on a read-only volume (tests run as root, so
    permissions alone would not stop it); returns the real os.unlink, to put back."""
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path) == stuck:
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    return real_unlink


def test_a_file_that_cannot_be_deleted_is_retried_at_the_next_pass(tmp_path, database, monkeypatch,
                                                                   caplog):
    root = tmp_path / "storage"
    uid = make_study(database, root)
    stuck = root / _instances(database, uid)[1].path
    real_unlink = refuse_to_delete(monkeypatch, stuck)
    report = apply_retention(database, root, NOW, days=30)
    assert (report.deleted, report.errors) == (1, 1)
    assert "1 could not be deleted (retried at the next pass)" in report.summary()
    assert stuck.is_file()
    first, second = _instances(database, uid)
    assert first.deleted_at == NOW and second.deleted_at is None
    assert any("Permission denied" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    [event] = _events(database, uid, EventKind.PIXEL_DATA_DELETED)
    assert "1 could not be deleted" in event.detail

    monkeypatch.setattr(os, "unlink", real_unlink)
    later = NOW + dt.timedelta(hours=1)
    report = apply_retention(database, root, later, days=30)
    assert (report.studies, report.deleted, report.errors) == (1, 1, 0)
    assert not stuck.exists()
    assert _instances(database, uid)[1].deleted_at == later
    assert len(_events(database, uid, EventKind.PIXEL_DATA_DELETED)) == 2


def test_studies_and_instances_are_read_in_batches(tmp_path, database):
    root = tmp_path / "storage"
    uids = [make_study(database, root, views=5) for _ in range(5)]
    report = apply_retention(database, root, NOW, days=30, batch_size=2)
    assert (report.studies, report.deleted) == (5, 25)
    for uid in uids:
        assert all(i.deleted_at == NOW for i in _instances(database, uid))
        assert len(_events(database, uid, EventKind.PIXEL_DATA_DELETED)) == 1


def test_a_dry_run_deletes_nothing(tmp_path, database):
    root = tmp_path / "storage"
    uid = make_study(database, root)
    (root / _instances(database, uid)[0].path).unlink()
    report = apply_retention(database, root, NOW, days=30, dry_run=True)
    assert (report.studies, report.deleted, report.missing, report.bytes) == (1, 1, 1, 100)
    assert report.summary().count("would delete 1 instance file(s)") == 1
    assert (root / _instances(database, uid)[1].path).is_file()
    assert all(i.deleted_at is None for i in _instances(database, uid))
    assert _events(database, uid, EventKind.PIXEL_DATA_DELETED) == []


def test_should_stop_ends_the_pass_between_studies(tmp_path, database):
    root = tmp_path / "storage"
    for _ in range(3):
        make_study(database, root)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 1

    report = apply_retention(database, root, NOW, days=30, should_stop=should_stop)
    assert report.studies == 1


def test_zero_days_is_refused(tmp_path, database):
    with pytest.raises(ValueError, match="days > 0"):
        apply_retention(database, tmp_path, NOW, days=0)


def test_a_late_instance_after_retention_is_scored_alone(tmp_path, database):
    """The study re-opens; the worker scores the instance it has, not the deleted ones."""
    root = tmp_path / "storage"
    config = parse_config({"storage": {"path": str(root)}, "database": {"url": "sqlite://"},
                           "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                             "port": 104}]}, base=tmp_path, environ={})
    files = write_study(tmp_path / "in", views=3, rows=64, columns=64)
    with database.session() as s:
        first = pydicom.dcmread(files[0])
        study = Study(study_instance_uid=first.StudyInstanceUID, state=StudyState.DELIVERED,
                      first_received_at=OLD, last_received_at=OLD, revision=1)
        s.add(study)
        s.flush()
        for f in files[:2]:
            ds = pydicom.dcmread(f)
            rel = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / rel)
            s.add(Instance(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID,
                           sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                           transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=rel,
                           size_bytes=f.stat().st_size, received_at=OLD))
        study_id = study.id
    late_file = files[2]
    assert apply_retention(database, root, NOW, days=30).deleted == 2

    with database.session() as s:  # what the receiver does with a late instance
        study = s.get(Study, study_id)
        study.state, study.revision, study.last_received_at = StudyState.COMPLETE, 2, NOW
        ds = pydicom.dcmread(late_file)
        rel = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        shutil.copy(late_file, root / rel)
        s.add(Instance(study_id=study_id, series_instance_uid=ds.SeriesInstanceUID,
                       sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                       transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=rel,
                       size_bytes=late_file.stat().st_size, received_at=NOW))
    scorer = FixedScorer(0.7)
    worker = StudyScorer(config, database, scorer, clock=lambda: NOW)
    try:
        result_id = worker.score_study(*worker.claim_next())
    finally:
        worker.close()
    assert scorer.calls == [1]
    with database.session() as s:
        result = s.get(StudyResult, result_id)
        assert result.analysed and result.probability == pytest.approx(0.7)
        assert [sc.instance.sop_instance_uid for sc in result.scores] == [ds.SOPInstanceUID]
        assert [sc.error for sc in result.scores] == [None]


def test_an_instance_received_again_after_retention_is_stored_again(tmp_path, database):
    root = tmp_path / "storage"
    uid = make_study(database, root, views=1)
    apply_retention(database, root, NOW, days=30)
    later = NOW + dt.timedelta(days=1)
    with database.session() as s:  # what the receiver does with a re-sent instance
        inst = s.scalar(select(Instance))
        inst.received_at = later
        (root / inst.path).write_bytes(b"again")
        study = s.scalar(select(Study))
        study.last_received_at, study.state = later, StudyState.DELIVERED
    [inst] = _instances(database, uid)
    assert inst.stored
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance).where(Instance.stored)) == 1
    assert apply_retention(database, root, later + dt.timedelta(days=29), days=30).deleted == 0
    report = apply_retention(database, root, later + dt.timedelta(days=31), days=30)
    assert report.deleted == 1 and not (root / inst.path).exists()


# -- purge ---------------------------------------------------------------------------------------


def test_purge_removes_every_row_and_file_of_one_study_and_nothing_of_another(tmp_path, database):
    root = tmp_path / "storage"
    uid, other = make_study(database, root), make_study(database, root)
    (root / uid / "stray.dcm").write_bytes(b"a file no row names")
    before = {m: _count(database, m) for m in (Instance, StudyResult, ImageScore, OutputObject,
                                               Delivery, Event, Study)}
    report = purge_study(database, root, uid, now=NOW)
    assert (report.state, report.forced, report.instances, report.results, report.image_scores,
            report.outputs, report.deliveries, report.events) == ("delivered", False, 2, 1, 2, 1, 1, 2)
    assert report.files == 4 and report.bytes == 2 * 100 + 2 + len(b"a file no row names")
    assert report.errors == []
    assert not (root / uid).exists() and not (root / "outputs" / uid).exists()
    with database.session() as s:
        assert s.scalar(select(Study).where(Study.study_instance_uid == uid)) is None
        assert [st.study_instance_uid for st in s.scalars(select(Study))] == [other]
    after = {m: _count(database, m) for m in before}
    assert after == {Instance: before[Instance] - 2, StudyResult: before[StudyResult] - 1,
                     ImageScore: before[ImageScore] - 2, OutputObject: before[OutputObject] - 1,
                     Delivery: before[Delivery] - 1, Event: before[Event] - 2 + 1,
                     Study: before[Study] - 1}
    # the other study is untouched, its files too
    assert all((root / i.path).is_file() for i in _instances(database, other))
    assert len(_events(database, other)) == 2
    with database.session() as s:
        [audit] = s.scalars(select(Event).where(Event.kind == EventKind.PURGED)).all()
    assert audit.study_id is None and audit.at == NOW
    assert report.ref == study_ref(uid) and report.ref in audit.detail
    assert uid not in audit.detail
    assert "2 instance(s), 1 result(s), 1 output object(s), 1 delivery(ies), 2 event(s)" in audit.detail
    assert f"purged study {uid} (was delivered)" in report.summary()


def test_purge_of_an_unknown_or_invalid_uid_is_an_error(tmp_path, database):
    root = tmp_path / "storage"
    make_study(database, root)
    with pytest.raises(StudyNotFound, match="no study with Study Instance UID 1.2.3.4"):
        purge_study(database, root, "1.2.3.4")
    with pytest.raises(NotAStudyUID, match="not a valid UID"):
        purge_study(database, root, "../..")
    assert root.is_dir() and _count(database, Study) == 1
    assert _count(database, Event) == 2  # nothing recorded either


@pytest.mark.parametrize("state", [StudyState.RECEIVING, StudyState.SCORING, StudyState.DISPATCHING])
def test_purge_refuses_a_busy_study_unless_forced(tmp_path, database, state):
    root = tmp_path / "storage"
    uid = make_study(database, root, state=state)
    with pytest.raises(StudyBusy, match=f"is {state.value}: .*--force"):
        purge_study(database, root, uid)
    assert all((root / i.path).is_file() for i in _instances(database, uid))
    report = purge_study(database, root, uid, force=True, now=NOW)
    assert report.forced and report.state == state.value
    assert not (root / uid).exists() and _count(database, Study) == 0
    with database.session() as s:
        assert f"while {state.value} (forced)" in s.scalar(select(Event)).detail


def test_purging_again_deletes_files_left_by_an_interrupted_purge(tmp_path, database):
    """Rows are deleted first, files after the commit: a crash in between leaves only files,
    all under the study's folders, and a second purge removes them."""
    root = tmp_path / "storage"
    uid = "1.2.826.0.1.424242"
    for rel in (instance_relpath(uid, "1.2.3", "1.2.3.4"), output_relpath(uid, "1.2.3.5")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"left")
    report = purge_study(database, root, uid, now=NOW)
    assert report.state is None and report.files == 2 and report.errors == []
    assert "no database record; leftover files deleted" in report.summary()
    assert not (root / uid).exists() and not (root / "outputs" / uid).exists()
    with database.session() as s:
        [audit] = s.scalars(select(Event)).all()
    assert audit.kind == EventKind.PURGED and study_ref(uid) in audit.detail
    with pytest.raises(StudyNotFound):
        purge_study(database, root, uid)


def test_a_file_purge_cannot_delete_is_reported(tmp_path, database, monkeypatch):
    root = tmp_path / "storage"
    uid = make_study(database, root)
    stuck = root / _instances(database, uid)[0].path
    real_unlink = refuse_to_delete(monkeypatch, stuck)
    report = purge_study(database, root, uid)
    assert f"{stuck.relative_to(root)}: Permission denied" in report.errors
    assert _count(database, Study) == 0 and stuck.is_file()
    monkeypatch.setattr(os, "unlink", real_unlink)
    report = purge_study(database, root, uid)
    assert report.files == 1 and report.errors == [] and not (root / uid).exists()


# -- the schema and the daemon ----------------------------------------------------------------------


def test_migration_0004_keeps_existing_instances_stored(db_url):
    def check(db: Database) -> None:
        with db.session() as s:
            inst = s.scalar(select(Instance))
            assert inst.deleted_at is None and inst.stored

    check_migration_keeps_rows(db_url, "0003", state="delivered",
                               path="1.2.3/1.2.3.1/1.2.3.1.1.dcm", received_at=OLD, check=check)


def _service(tmp_path: Path, days: float):  # type: ignore[no-untyped-def]
    from daemon.service import Service

    config = parse_config({
        "node": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"path": str(tmp_path / "storage"), "min_free_mb": 0, "retention_days": days,
                    "retention_interval_s": 600},
        "database": {"url": f"sqlite:///{tmp_path / 'radtriage.db'}"},
        "decoding": {"workers": 1},
    }, base=tmp_path, environ={})
    return Service(config, scorer=FixedScorer(0.5), destinations={}, clock=lambda: NOW)


def test_the_retention_job_is_scheduled_when_retention_days_is_set(tmp_path):
    service = _service(tmp_path, days=30)
    try:
        service.start()
        job = service.scheduler.get_job("retention")
        assert job is not None and job.trigger.interval == dt.timedelta(seconds=600)
        root = service.config.storage.path
        uid = make_study(service.db, root)
        service._retention_tick()
        assert not any((root / i.path).exists() for i in _instances(service.db, uid))
        assert len(_events(service.db, uid, EventKind.PIXEL_DATA_DELETED)) == 1
    finally:
        service.stop()


def test_no_retention_job_when_retention_days_is_0(tmp_path):
    service = _service(tmp_path, days=0)
    try:
        service.start()
        assert service.scheduler.get_job("retention") is None
        assert service.scheduler.get_job("dispatch") is not None
    finally:
        service.stop()
