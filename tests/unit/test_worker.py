"""daemon.worker: scoring a complete study into a result, an SR on disk and deliveries."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from daemon.config import parse_config
from daemon.worker import StudyScorer, recover
from db import Delivery, DeliveryState, Event, EventKind, Instance, Study, StudyResult, StudyState
from dicom_io.storage import instance_relpath
from tests.conftest import write_study
from tests.fakes import FixedScorer

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)


def _setup(tmp_path: Path, database, views: int = 2):  # type: ignore[no-untyped-def]
    config = parse_config({
        "storage": {"path": str(tmp_path / "storage")},
        "database": {"url": "sqlite://"},  # unused: the fixture's database is passed in
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
    }, base=tmp_path, environ={})
    files = write_study(tmp_path / "in", views=views, rows=64, columns=64)
    with database.session() as s:
        first = pydicom.dcmread(files[0])
        study = Study(study_instance_uid=first.StudyInstanceUID, state=StudyState.COMPLETE,
                      first_received_at=NOW, last_received_at=NOW, completed_at=NOW, revision=1)
        s.add(study)
        s.flush()
        for f in files:
            ds = pydicom.dcmread(f)
            rel = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            (tmp_path / "storage" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, tmp_path / "storage" / rel)
            s.add(Instance(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID,
                           sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                           transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=rel,
                           size_bytes=f.stat().st_size, received_at=NOW))
    return config, files


def test_a_corrupt_view_is_reported_and_the_rest_scored(tmp_path, database):
    config, files = _setup(tmp_path, database)
    with database.session() as s:
        broken = s.scalars(select(Instance).order_by(Instance.id)).all()[1]
        (tmp_path / "storage" / broken.path).write_bytes(b"not DICOM at all")
    scorer = FixedScorer(0.9)
    worker = StudyScorer(config, database, scorer, clock=lambda: NOW)
    study_id, revision = worker.claim_next()
    result_id = worker.score_study(study_id, revision)
    assert scorer.calls == [1]
    with database.session() as s:
        result = s.get(StudyResult, result_id)
        assert result.probability == pytest.approx(0.9) and result.priority == "HIGH"
        assert [sc.error is None for sc in result.scores] == [True, False]
        assert "DICOM" in result.scores[1].error
        sr = pydicom.dcmread(tmp_path / "storage" / result.sr_path)
        refs = {r.ReferencedSOPInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
        assert refs == {pydicom.dcmread(files[0]).SOPInstanceUID}
        assert "UNTRAINED" in sr.ManufacturerModelName  # the model is named as untrained
        deliveries = {d.object_kind: d for d in s.scalars(select(Delivery)).all()}
        assert sorted(deliveries) == ["SC", "SR"]  # the SR and the summary image
        delivery = deliveries["SR"]
        assert delivery.state == DeliveryState.PENDING and delivery.priority == "HIGH"
        assert s.get(Study, study_id).state == StudyState.DISPATCHING


def test_no_scorable_view_is_reported_not_analysed(tmp_path, database):
    config, _ = _setup(tmp_path, database, views=1)
    with database.session() as s:
        only = s.scalar(select(Instance))
        ds = pydicom.dcmread(tmp_path / "storage" / only.path)
        ds.NumberOfFrames = 2  # multi-frame: refused by the pixel stage, still readable for the SR
        ds.save_as(tmp_path / "storage" / only.path, enforce_file_format=True)
    worker = StudyScorer(config, database, FixedScorer(0.9), clock=lambda: NOW)
    result_id = worker.score_study(*worker.claim_next())
    with database.session() as s:
        result = s.get(StudyResult, result_id)
        assert not result.analysed and result.probability is None and result.priority == "ROUTINE"
        assert result.series_description == "AI TRIAGE: NOT ANALYSED - MULTIFRAME"
        assert "multi-frame" in result.reason


def test_a_study_reopened_while_scored_is_not_recorded(tmp_path, database):
    config, _ = _setup(tmp_path, database)
    worker = StudyScorer(config, database, FixedScorer(0.2), clock=lambda: NOW)
    study_id, revision = worker.claim_next()
    with database.session() as s:  # a late instance arrives: the receiver re-opens the study
        study = s.get(Study, study_id)
        study.state, study.revision = StudyState.RECEIVING, study.revision + 1
    assert worker.score_study(study_id, revision) is None
    with database.session() as s:
        assert s.scalars(select(StudyResult)).all() == []
    assert not list((tmp_path / "storage" / "outputs").rglob("*.dcm"))


def test_recover_puts_interrupted_work_back(tmp_path, database):
    _setup(tmp_path, database)
    with database.session() as s:
        s.scalar(select(Study)).state = StudyState.SCORING
    recover(database, NOW)
    with database.session() as s:
        assert s.scalar(select(Study)).state == StudyState.COMPLETE


def test_a_view_with_malformed_attributes_is_an_error_not_a_failed_study(tmp_path, database):
    """WindowCenter '40,5' (a comma decimal, seen in real files) breaks the VOI LUT."""
    config, _ = _setup(tmp_path, database)
    with database.session() as s:
        second = s.scalars(select(Instance).order_by(Instance.id)).all()[1]
        path = tmp_path / "storage" / second.path
        raw = path.read_bytes()
        ds = pydicom.dcmread(path)
        old = str(ds.WindowCenter).encode()
        path.write_bytes(raw.replace(b"\x28\x00\x50\x10DS" + len(old).to_bytes(2, "little") + old,
                                     b"\x28\x00\x50\x10DS\x04\x0040,5", 1))
    worker = StudyScorer(config, database, FixedScorer(0.3), clock=lambda: NOW)
    result_id = worker.score_study(*worker.claim_next())
    with database.session() as s:
        result = s.get(StudyResult, result_id)
        assert result.analysed and result.probability == pytest.approx(0.3)
        errors = [sc.error for sc in result.scores]
        assert errors[0] is None and errors[1] is not None


class _BrokenScorer(FixedScorer):
    def score(self, views):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class _SlowScorer(FixedScorer):
    """Scores, but each batch takes ``delay_s``; batch_size 1 so the deadline is checked often."""

    batch_size = 1
    delay_s = 0.4

    def score(self, views):  # type: ignore[no-untyped-def]
        import time

        time.sleep(self.delay_s)
        return super().score(views)


def _add_second_study(tmp_path, database) -> None:  # type: ignore[no-untyped-def]
    files = write_study(tmp_path / "in2", views=1, rows=64, columns=64)
    with database.session() as s:
        ds = pydicom.dcmread(files[0])
        study = Study(study_instance_uid=ds.StudyInstanceUID, state=StudyState.COMPLETE,
                      first_received_at=NOW, last_received_at=NOW,
                      completed_at=NOW + dt.timedelta(seconds=1), revision=1)
        s.add(study)
        s.flush()
        rel = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        (tmp_path / "storage" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[0], tmp_path / "storage" / rel)
        s.add(Instance(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID,
                       sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                       transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=rel,
                       size_bytes=files[0].stat().st_size, received_at=NOW))


def test_an_inference_error_reports_that_study_not_analysed_and_the_next_goes_on(tmp_path, database):
    config, _ = _setup(tmp_path, database)
    _add_second_study(tmp_path, database)
    broken = StudyScorer(config, database, _BrokenScorer(0.9), clock=lambda: NOW)
    first = broken.score_study(*broken.claim_next())
    fine = StudyScorer(config, database, FixedScorer(0.1), clock=lambda: NOW)
    second = fine.score_study(*fine.claim_next())
    with database.session() as s:
        bad, good = s.get(StudyResult, first), s.get(StudyResult, second)
        assert not bad.analysed and bad.probability is None and bad.priority == "ROUTINE"
        # the error's type and where it was raised; its message only with logging.phi
        assert "inference failed: RuntimeError in " in bad.reason and "CUDA" not in bad.reason
        assert all("inference failed" in sc.error for sc in bad.scores)
        assert bad.series_description == "AI TRIAGE: NOT ANALYSED - MODEL ERROR"
        sr = pydicom.dcmread(tmp_path / "storage" / bad.sr_path)  # the SR says so, and is sent
        assert "NOT ANALYSED" in sr.SeriesDescription
        assert {d.object_kind for d in s.scalars(select(Delivery).where(
            Delivery.result_id == bad.id))} >= {"SR"}
        assert good.analysed and good.probability == pytest.approx(0.1)
        failed = s.get(Study, bad.study_id)
        assert failed.state_reason.startswith("inference failed: RuntimeError in ")
        assert s.scalars(select(Event.detail).where(Event.study_id == failed.id,
                                                    Event.kind == EventKind.FAILED)).all() == [
            "not analysed: " + failed.state_reason]
        assert s.get(Study, good.study_id).state_reason is None


def test_a_study_that_takes_too_long_is_not_analysed_with_timed_out(tmp_path, database):
    config, _ = _setup(tmp_path, database, views=3)
    config = config.model_copy(update={
        "limits": config.limits.model_copy(update={"study_timeout_s": 0.5}),
        "decoding": config.decoding.model_copy(update={"workers": 1})})  # no process start-up
    scorer = _SlowScorer(0.9)
    worker = StudyScorer(config, database, scorer, clock=lambda: NOW)
    result_id = worker.score_study(*worker.claim_next())
    with database.session() as s:
        result = s.get(StudyResult, result_id)
        errors = [sc.error for sc in result.scores]
    # single-view batches of 0.4 s: the first is scored in time, the second is still in the
    # model at the deadline (its late score is dropped), the third is taken back from the queue
    worker.close()  # waits for the engine: the taken-back view never reaches the model
    assert len(scorer.calls) == 2
    assert errors[0] is None
    assert all("scoring timed out" in e and "limits.study_timeout_s (0.5 s)" in e for e in errors[1:])


def test_a_large_study_is_prepared_and_scored_chunk_by_chunk(tmp_path):
    """40 views: two chunks (32 + 8), batches of 16 within each; a model failing on the second
    chunk leaves no view of the study with a score."""
    from daemon.worker import VIEWS_PER_CHUNK, build_pool, score_views
    from dicom_io.pixels import Preprocessing

    config = parse_config({"decoding": {"workers": 1}}, base=tmp_path, environ={})
    files = write_study(tmp_path / "in", views=40, rows=64, columns=64)
    paths = [(n, f"1.2.3.{n}", f) for n, f in enumerate(files)]
    pool = build_pool(config, Preprocessing())
    scorer = FixedScorer(0.4)
    scorer.batch_size = 16
    outcomes = score_views(scorer, pool, paths, heatmap=None)
    assert VIEWS_PER_CHUNK == 32 and scorer.calls == [16, 16, 8]
    assert [o.probability for o in outcomes] == [pytest.approx(0.4)] * 40

    class FailsLater(FixedScorer):
        def score(self, views):  # type: ignore[no-untyped-def]
            if len(self.calls) == 2:
                raise RuntimeError("out of memory")
            return super().score(views)

    failing = FailsLater(0.4)
    failing.batch_size = 16
    outcomes = score_views(failing, pool, paths, heatmap=None)
    assert all(o.probability is None and "inference failed: RuntimeError" in o.error
               for o in outcomes)


def _complete(db, name: str, completed_at: dt.datetime, urgent: bool) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        study = Study(study_instance_uid=f"1.2.3.{name}", state=StudyState.COMPLETE, urgent=urgent,
                      first_received_at=completed_at, last_received_at=completed_at,
                      completed_at=completed_at, revision=1)
        s.add(study)
        s.flush()
        return study.id


def test_urgent_studies_are_claimed_first_but_old_routine_ones_are_not_starved(
        tmp_path, database) -> None:  # type: ignore[no-untyped-def]
    config = parse_config({"storage": {"path": str(tmp_path / "storage")},
                           "decoding": {"workers": 1}, "urgency": {"aging_s": 30}},
                          base=tmp_path, environ={})
    old_routine = _complete(database, "1", NOW, urgent=False)
    recent_routine = _complete(database, "2", NOW + dt.timedelta(seconds=50), urgent=False)
    urgent_a = _complete(database, "3", NOW + dt.timedelta(seconds=40), urgent=True)
    urgent_b = _complete(database, "4", NOW + dt.timedelta(seconds=55), urgent=True)
    scorer = StudyScorer(config, database, FixedScorer(0.1))
    try:
        order = [scorer.claim_next()[0] for _ in range(4)]
    finally:
        scorer.close()
    # the routine study completed 40 s before the first urgent one (more than aging_s) goes
    # first; the routine one completed after both urgent ones waits for them
    assert order == [old_routine, urgent_a, urgent_b, recent_routine]
    assert scorer.claim_next() is None
