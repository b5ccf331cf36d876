"""The whole path of a study through the real daemon, with DCMTK peers on both sides."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import func, select

from db import Database, Delivery, DeliveryState, Event, EventKind, ImageScore, Instance, Study, StudyResult, StudyState
from tests.conftest import write_study
from tests.integration.conftest import need, storescu, wait_for

pytestmark = pytest.mark.integration


def _sr_values(path: Path) -> dict:
    """Read back what matters in the SR with highdicom."""
    sr = hd.sr.srread(path)  # highdicom must be able to read it back
    ds = pydicom.dcmread(path)
    probs = []
    normality = []
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            tracking = [c.TextValue for c in group.ContentSequence
                        if c.ConceptNameCodeSequence[0].CodeValue == "112039"]
            if tracking and "(study)" not in tracking[0]:
                continue
            for c in group.ContentSequence:
                code = c.ConceptNameCodeSequence[0].CodeValue
                if code == "122157":
                    probs.append(float(c.MeasuredValueSequence[0].NumericValue))
                if code == "121402":
                    normality.append(c.ConceptCodeSequence[0].CodeMeaning)
    evidence = {
        inst.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    return {"ds": ds, "sr": sr, "probability": probs, "normality": normality,
            "evidence": evidence}


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([need("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_three_view_study_gets_a_valid_sr_at_the_pacs(database, make_daemon, pacs, tmp_path, request):
    overrides = {}
    if database == "postgresql":
        overrides["database"] = {"url": request.getfixturevalue("pg_url")}
    files = write_study(tmp_path / "study", views=3, rows=512, columns=512)
    sources = [pydicom.dcmread(f) for f in files]
    daemon = make_daemon(
        destinations=pacs.as_destination(),
        **overrides,
    ).start()

    storescu(daemon.port, files)
    sr_file = wait_for(lambda: pacs.files(), 90, "the SR at the PACS")[0]
    assert daemon.stop() == 0, daemon.output()

    got = _sr_values(sr_file)
    ds = got["ds"]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert ds.PatientID == sources[0].PatientID
    assert got["evidence"] == {s.SOPInstanceUID for s in sources}
    assert ds.PreliminaryFlag == "PRELIMINARY" and ds.VerificationFlag == "UNVERIFIED"
    assert re.fullmatch(r"AI TRIAGE: (ABNORMAL|NORMAL) \d{1,3}% - PRIORITY (HIGH|ELEVATED|ROUTINE)",
                        ds.SeriesDescription), ds.SeriesDescription
    assert _dciodvfy_errors(sr_file) == []

    db = Database(daemon.db_url)
    try:
        with db.session() as s:
            study = s.scalar(select(Study))
            assert study.state == StudyState.DELIVERED
            result = s.scalar(select(StudyResult).where(StudyResult.study_id == study.id))
            scores = [sc.probability for sc in s.scalars(select(ImageScore).where(ImageScore.result_id == result.id))]
            assert len(scores) == 3 and all(p is not None for p in scores)
            mean = sum(scores) / 3
            assert got["probability"] == [pytest.approx(mean, abs=1e-6)]
            assert result.probability == pytest.approx(mean, abs=1e-9)
            assert got["normality"] == ["Abnormal" if mean >= 0.5 else "Normal"]
            assert result.sr_sop_instance_uid == ds.SOPInstanceUID
            kinds = [e.kind for e in s.scalars(select(Event).where(Event.study_id == study.id).order_by(Event.id))]
            assert kinds.count(EventKind.RECEIVED) == 3
            assert kinds[-3:] == [EventKind.COMPLETED, EventKind.SCORED, EventKind.SENT]
            # the stored bytes are the bytes sent: no decode/re-encode
            for inst in s.scalars(select(Instance)):
                stored = pydicom.dcmread(daemon.workdir / "storage" / inst.path)
                original = next(x for x in sources if x.SOPInstanceUID == inst.sop_instance_uid)
                assert stored.PixelData == original.PixelData
    finally:
        db.dispose()

    # patient data never reaches the log with logging.phi false (the default)
    log_text = daemon.output() + daemon.log_path.read_text()
    assert "PHANTOM" not in log_text
    assert sources[0].PatientID not in log_text


def test_destination_down_at_first_gets_the_sr_exactly_once(make_daemon, tmp_path):
    from tests.conftest import free_port
    from tests.integration.conftest import StoreSCP

    pacs_port = free_port()
    files = write_study(tmp_path / "study", views=2, rows=256, columns=256)
    daemon = make_daemon(
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port,
                       "objects": ["sr"]}],
    ).start()
    storescu(daemon.port, files)
    db = Database(daemon.db_url)
    try:
        def failures() -> int:
            with db.session() as s:
                return s.scalar(select(func.count()).select_from(Event).where(Event.kind == EventKind.SEND_FAILED))

        wait_for(lambda: failures() >= 2, 90, "two failed delivery attempts")
        with db.session() as s:
            d = s.scalar(select(Delivery))
            assert d.state in (DeliveryState.PENDING, DeliveryState.SENDING)
            assert "cannot connect" in d.last_error

        pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
        try:
            wait_for(lambda: pacs.files(), 60, "the SR once the PACS is up")
            time.sleep(3)  # several more dispatch cycles: nothing may be sent again
            received = pacs.files()
        finally:
            pacs.stop()
        assert len(received) == 1, received
        with db.session() as s:
            d = s.scalar(select(Delivery))
            assert d.state == DeliveryState.DELIVERED and d.attempts >= 3
            assert s.scalar(select(Study)).state == StudyState.DELIVERED
            sent = s.scalar(select(func.count()).select_from(Event).where(Event.kind == EventKind.SENT))
            assert sent == 1
    finally:
        db.dispose()
    assert daemon.stop() == 0


def test_late_instance_reopens_and_supersedes(make_daemon, pacs, tmp_path):
    files = write_study(tmp_path / "study", views=3, rows=256, columns=256)
    daemon = make_daemon(
        destinations=pacs.as_destination(),
    ).start()
    storescu(daemon.port, files[:2])
    wait_for(lambda: len(pacs.files()) == 1, 90, "the first SR")
    # the same instances again: idempotent, nothing re-opened
    storescu(daemon.port, files[:2])
    time.sleep(2)
    assert len(pacs.files()) == 1
    storescu(daemon.port, files[2:])
    wait_for(lambda: len(pacs.files()) == 2, 90, "the second SR after the late instance")
    db = Database(daemon.db_url)
    try:
        def delivered() -> bool:
            with db.session() as s:
                return s.scalar(select(Study)).state == StudyState.DELIVERED

        wait_for(delivered, 30, "the study to be marked delivered")
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 3
            results = s.scalars(select(StudyResult).order_by(StudyResult.id)).all()
            assert [r.superseded for r in results] == [True, False]
            assert [len(r.scores) for r in results] == [2, 3]
            study = s.scalar(select(Study))
            assert study.revision == 2 and study.state == StudyState.DELIVERED
            kinds = [e.kind for e in s.scalars(select(Event).order_by(Event.id))]
            assert kinds.count(EventKind.DUPLICATE) == 2
            assert kinds.count(EventKind.REOPENED) == 1
    finally:
        db.dispose()
    srs = [pydicom.dcmread(f) for f in pacs.files()]
    assert len({sr.SOPInstanceUID for sr in srs}) == 2
    assert daemon.stop(signal.SIGINT) == 0

    # `radtriage status` reads the same database
    import io

    from daemon.cli import main

    out = io.StringIO()
    assert main(["status", "--config", str(daemon.config_path)], out=out) == 0
    text = out.getvalue()
    assert "studies: delivered 1" in text and "deliveries: delivered 2" in text
    assert srs[0].StudyInstanceUID in text


def test_access_and_sop_class_are_enforced_at_association(make_daemon, tmp_path):
    daemon = make_daemon(node={"allowed_calling_aes": ["PACS"]}).start()
    files = write_study(tmp_path / "study", views=1, rows=64, columns=64)
    refused = storescu(daemon.port, files, aet="INTRUDER", check=False)
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower()
    # radtriage must be called by its AE title (node.require_called_ae: true by default)
    wrong = storescu(daemon.port, files, aec="ELSEWHERE", aet="PACS", check=False)
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    storescu(daemon.port, files, aet="PACS")

    # a CT image is not a radiograph: refused at negotiation, nothing stored
    ct = pydicom.dcmread(files[0])
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ct.Modality = "CT"
    ct_path = tmp_path / "ct.dcm"
    ct.save_as(ct_path, enforce_file_format=True)
    out = storescu(daemon.port, [ct_path], aet="PACS", check=False)
    assert "no presentation context" in (out.stdout + out.stderr).lower() or out.returncode != 0
    db = Database(daemon.db_url)
    try:
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 1
    finally:
        db.dispose()
    assert daemon.stop() == 0
    log = daemon.log_path.read_text() + daemon.output()
    assert "INTRUDER" in log
    assert "called AE title 'ELSEWHERE' is not node.ae_title" in log
    # the refused CT left a trace: the class by name, who proposed it
    assert re.search(r"refused presentation context\(s\) proposed by 'PACS' at .*CT Image Storage",
                     log), log


def test_malformed_instance_is_refused_and_quarantined(make_daemon, tmp_path):
    """A data set without a Study Instance UID: failure status, kept aside with the reason."""
    daemon = make_daemon().start()
    files = write_study(tmp_path / "study", views=1, rows=64, columns=64)
    ds = pydicom.dcmread(files[0])
    ds.StudyInstanceUID = ""
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    out = storescu(daemon.port, [bad], check=False)
    assert "error: cannotunderstand" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    # the association goes on serving: a good instance is stored after the bad one
    storescu(daemon.port, files)
    quarantine = daemon.workdir / "storage" / "quarantine"
    notes = list(quarantine.glob("*.txt"))
    assert len(notes) == 1 and "StudyInstanceUID" in notes[0].read_text()
    assert len(list(quarantine.glob("*.dcm"))) == 1
    assert daemon.stop() == 0


def test_startup_fails_clearly_without_a_model(tmp_path):
    from daemon.cli import main
    import io

    cfg = tmp_path / "config.yaml"
    cfg.write_text("model: {checkpoint: missing.pt}\nstorage: {path: s}\ndatabase: {url: 'sqlite:///x.db'}\n")
    err = io.StringIO()
    assert main(["serve", "--config", str(cfg)], err=err) == 1
    assert "model.checkpoint" in err.getvalue() and "missing.pt" in err.getvalue()


def test_compressed_transfer_syntaxes_are_received_as_sent_and_scored(make_daemon, tmp_path):
    """JPEG 2000 lossless and RLE: negotiated, stored byte for byte, decoded for scoring."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    files = write_study(tmp_path / "study", views=2, rows=128, columns=128)
    for path, syntax in zip(files, (JPEG2000Lossless, RLELossless)):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    daemon = make_daemon().start()
    # storescu proposes a file's own compressed transfer syntax when told which one
    storescu(daemon.port, files[:1], extra=["--propose-j2k-lossless"])
    storescu(daemon.port, files[1:], extra=["--propose-rle"])
    db = Database(daemon.db_url)
    try:
        def scored():
            with db.session() as s:
                return s.scalar(select(StudyResult))

        result = wait_for(scored, 90, "the study to be scored")
        with db.session() as s:
            stored = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
            scores = s.scalars(select(ImageScore).where(ImageScore.result_id == result.id)).all()
        assert [sc.error for sc in scores] == [None, None]
        assert result.analysed
        for f, syntax in zip(files, (JPEG2000Lossless, RLELossless)):
            sent = pydicom.dcmread(f)
            inst = stored[sent.SOPInstanceUID]
            kept = pydicom.dcmread(daemon.workdir / "storage" / inst.path)
            assert inst.transfer_syntax_uid == syntax == kept.file_meta.TransferSyntaxUID
            assert kept.PixelData == sent.PixelData  # the compressed bytes, as sent
    finally:
        db.dispose()
    assert daemon.stop() == 0


def test_restart_after_sigkill_reevaluates_completion_from_the_database(make_daemon, pacs, tmp_path):
    """Killed before the study completed: the restarted daemon completes, scores and sends it."""
    files = write_study(tmp_path / "study", views=2, rows=128, columns=128)
    daemon = make_daemon(
        completion={"release_grace_s": 600, "stable_s": 6},
        destinations=pacs.as_destination(),
    ).start()
    storescu(daemon.port, files)
    daemon.kill()  # SIGKILL: no clean shutdown
    db = Database(daemon.db_url)
    try:
        with db.session() as s:
            assert s.scalar(select(Study)).state == StudyState.RECEIVING
            assert s.scalar(select(func.count()).select_from(Instance)) == 2
        daemon.start()
        wait_for(lambda: pacs.files(), 90, "the SR after the restart")
        with db.session() as s:
            study = s.scalar(select(Study))
            assert [len(r.scores) for r in study.results] == [2]
            kinds = [e.kind for e in s.scalars(select(Event).order_by(Event.id))]
            assert kinds.count(EventKind.COMPLETED) == 1 and "complete (stable)" in [
                e.detail.split(",")[0] for e in s.scalars(select(Event).where(Event.kind == EventKind.COMPLETED))]
    finally:
        db.dispose()
    assert len(pacs.files()) == 1
    assert daemon.stop() == 0


def test_sigterm_lets_the_open_association_finish(make_daemon, tmp_path):
    """SIGTERM mid-transfer: no new associations, but the open one completes and is stored."""
    files = write_study(tmp_path / "study", views=24, rows=2048, columns=2048)  # ~200 MB
    daemon = make_daemon(completion={"release_grace_s": 600}).start()  # nothing scored meanwhile
    cmd = [need("storescu"), "-aec", "RADTRIAGE", "-aet", "STORESCU", "127.0.0.1", str(daemon.port),
           *map(str, files)]
    sender = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = Database(daemon.db_url)
    try:
        def some_stored() -> bool:
            with db.session() as s:
                return (s.scalar(select(func.count()).select_from(Instance)) or 0) >= 1

        wait_for(some_stored, 60, "the first instance to be stored")
        daemon.proc.send_signal(signal.SIGTERM)
        out, _ = sender.communicate(timeout=120)
        assert sender.returncode == 0, out
        assert daemon.proc.wait(60) == 0, daemon.output()
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 24
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        db.dispose()
    assert len(list((daemon.workdir / "storage").glob("*/*/*.dcm"))) == 24
    log_lines = daemon.log_path.read_text().splitlines()
    signalled = next(i for i, line in enumerate(log_lines) if "received SIGTERM" in line)
    stored_after = [line for line in log_lines[signalled:] if " stored " in line]
    assert stored_after, "SIGTERM came after the transfer: the test proved nothing"


def test_a_released_study_is_complete_when_its_grace_ends_not_at_the_next_sweep(make_daemon, pacs, tmp_path):
    """The release schedules the completion check for the end of release_grace_s: with the
    periodic sweep a minute apart, the study is still complete (and its SR sent) well before."""
    files = write_study(tmp_path / "study", views=2, rows=256, columns=256)
    daemon = make_daemon(destinations=pacs.as_destination(),
                         completion={"release_grace_s": 0.2, "stable_s": 600,
                                     "sweep_interval_s": 60}).start()
    storescu(daemon.port, files)
    wait_for(lambda: pacs.files(), 55, "the SR at the PACS before the first periodic sweep")
    assert daemon.stop() == 0, daemon.output()
    db = Database(daemon.db_url)
    try:
        with db.session() as s:
            study = s.scalar(select(Study))
            waited = (study.completed_at - study.last_received_at).total_seconds()
            detail = s.scalar(select(Event.detail).where(Event.kind == EventKind.COMPLETED))
    finally:
        db.dispose()
    assert 0.2 <= waited < 60, waited
    assert detail.startswith("complete (association released)")
