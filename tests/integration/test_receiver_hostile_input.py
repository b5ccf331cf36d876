"""Hostile input to the Storage SCP (issue 17, findings 3, 11 and 13).

* A deflate bomb (a 16000 x 16000 image of zeros, 0.25 MB deflated on the wire) sent four times
  in parallel to ``radtriage serve`` in a subprocess: the daemon's memory, preparation workers
  included, is measured from outside (VmHWM, the peak, reset before the bombs), and C-ECHO
  still answers. A deflated image of more than ``limits.max_pixels`` is refused at the door.
* A legitimate deflated instance is stored byte for byte and prepares exactly as its explicit
  VR twin (same tensor, so the same score).
* A SOP Instance UID never moves to another study or series; a re-send with other bytes in the
  same series replaces the stored copy and the audit names both SHA-256.
* Control characters in the request's SOP Instance UID reach neither the log nor the
  quarantine note as such.

The in-process receiver (``receivers``) sends raw data sets with pynetdicom's
``STORE_SEND_CHUNKED_DATASET``, as tests/integration/test_malformed_network.py does.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage
from sqlalchemy import select

from daemon.receiver import QUARANTINE_DIR
from db import Database, Event, EventKind, Instance, Study
from dicom_io.bodypart import SelectionRules
from dicom_io.pixels import DecodeOptions, Preprocessing
from dicom_io.prepare import prepare_view
from dicom_io.synthetic import StudySpec, make_instance
from tests.dicom_io import bombs
from tests.integration.conftest import echo, wait_for
from tests.conftest import write_study
from tests.senders import PeakMemory, memory_mb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),
]

#: Allowed growth of the daemon's peak memory (its own VmHWM plus its children's) while four
#: bombs are received, over its resident memory before them. Measured: a few MB (the wire
#: bytes, the inflater's 1 MiB windows, pynetdicom's buffers); before the fix, +0.93 GB for one
#: bomb and 4.3 GB for four. 64 MB leaves room for the allocator and a busy machine, and is far
#: below one bomb's 256 MB of pixels: a single whole-data-set inflation anywhere fails it.
BOMB_GROWTH_MB = 64
BOMBS = 4
ANSWER_WITHIN_S = 30

CONFLICT_STATUS = 0xC409
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def raw_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's data set as it is (no decode, no re-encode)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _store_files(port: int, paths: list[Path], *, calling: str = "HOSTILE",
                 comments: list[str] | None = None) -> list[int]:
    """C-STORE each file raw on one association; each status (-1: no answer). ``comments``
    gets each answer's Error Comment ("" when none)."""
    ae = AE(ae_title=calling)
    for ts in (uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian):
        ae.add_requested_context(ComputedRadiographyImageStorage, [ts])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_WITHIN_S
    assoc = ae.associate("127.0.0.1", port, ae_title="RADTRIAGE")
    assert assoc.is_established, "the receiver refused the association"
    statuses = []
    try:
        for path in paths:
            answer = assoc.send_c_store(path)
            statuses.append(int(answer.Status) if "Status" in answer else -1)
            if comments is not None:
                comments.append(str(answer.get("ErrorComment", "") or ""))
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def _save(ds: pydicom.Dataset, path: Path, ts: str = uid.ExplicitVRLittleEndian) -> Path:
    ds.file_meta.TransferSyntaxUID = ts
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# -- finding 3: deflate bombs ------------------------------------------------------------------


def _family(pid: int) -> list[int]:
    """The daemon and its child processes (the preparation workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                pids.append(int(entry.name))
    return pids


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def _reset_peaks(pids: list[int]) -> bool:
    """VmHWM back to the current RSS (Linux 4.0+, ``clear_refs`` 5), so a peak is the bombs';
    False where the kernel does not let us (then only the sampled RSS counts)."""
    try:
        for p in pids:
            Path(f"/proc/{p}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_mb(pid: int) -> float:
    """The daemon's and its workers' peaks summed, MB."""
    total = 0
    for p in _family(pid):
        try:
            total += _status_kb(p, "VmHWM")
        except (OSError, AssertionError):
            continue  # gone meanwhile
    return total / 1024


def test_parallel_deflate_bombs_leave_the_daemon_small_and_answering(make_daemon, small_checkpoint,
                                                                       tmp_path, raw_send,
                                                                       record_property):
    daemon = make_daemon(checkpoint=small_checkpoint, preprocessing={"size": 64},
                         logging={"level": "INFO", "file": "radtriage.log"}).start()
    db = Database(daemon.db_url)
    try:
        # a real study first, scored, so the preparation workers exist and are measured
        warm = write_study(tmp_path / "warm", views=1, rows=64, columns=64)
        assert _store_files(daemon.port, warm) == [0]

        def scored() -> bool:
            with db.session() as s:
                return s.scalar(select(Study.state)) not in (None, "receiving", "complete", "scoring")

        wait_for(scored, 60, "the warm-up study to be scored")
        folder = tmp_path / "bombs"
        folder.mkdir()
        paths = []
        for n in range(BOMBS):
            ds, raw = bombs.bomb()
            paths.append(folder / f"bomb{n}.dcm")
            paths[-1].write_bytes(raw)
        assert all(p.stat().st_size < 400_000 for p in paths)  # a quarter of a MB on the wire

        pid = daemon.proc.pid
        reset = _reset_peaks(_family(pid))
        before = memory_mb(pid)
        sampler = PeakMemory(pid, "rss")
        sampler.start()

        statuses: dict[int, list[int]] = {}
        threads = [threading.Thread(target=lambda n=n: statuses.__setitem__(
            n, _store_files(daemon.port, [paths[n]], calling=f"BOMB{n}"))) for n in range(BOMBS)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(ANSWER_WITHIN_S * 2)
        took = time.monotonic() - start
        assert echo(daemon.port), "C-ECHO no longer answered after the bombs"
        time.sleep(1.5)  # anything accepted would now be completing (release_grace_s 0.5 s)
        sampled = sampler.stop()
        peak = max(sampled, _peak_mb(pid) if reset else 0.0)
        growth = peak - before["rss"]
        record_property("deflate_bombs", {"before_rss_mb": round(before["rss"], 1),
                                          "peak_mb": round(peak, 1), "growth_mb": round(growth, 1),
                                          "seconds": round(took, 2)})
        print(f"{BOMBS} parallel deflate bombs: resident {before['rss']:.0f} MB before, "
              f"peak {peak:.0f} MB (+{growth:.0f} MB), answered in {took:.1f} s")

        assert [statuses[n] for n in range(BOMBS)] == [[OUT_OF_RESOURCES]] * BOMBS
        assert growth < BOMB_GROWTH_MB, f"+{growth:.0f} MB for {BOMBS} deflate bombs"
        with db.session() as s:
            assert len(s.scalars(select(Instance)).all()) == 1  # the warm-up view only
        log = daemon.log_path.read_text(errors="replace")
        assert "limits.max_pixels" in log
        assert echo(daemon.port)
    finally:
        db.dispose()
    assert daemon.stop() == 0


def test_a_deflated_instance_is_stored_as_sent_and_prepares_as_its_explicit_twin(
        receivers, tmp_path, raw_send):
    receiver, db = receivers()
    spec = StudySpec(views=2, rows=300, columns=240, seed=7)
    deflated, explicit = make_instance(spec, 0), make_instance(spec, 0)
    explicit.SOPInstanceUID = explicit.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    sent = [_save(deflated, tmp_path / "in" / "deflated.dcm", uid.DeflatedExplicitVRLittleEndian),
            _save(explicit, tmp_path / "in" / "explicit.dcm")]
    assert _store_files(receiver.port, sent) == [0, 0]

    storage = tmp_path / "storage"
    with db.session() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
        stored_deflated = storage / rows[str(deflated.SOPInstanceUID)].path
        stored_explicit = storage / rows[str(explicit.SOPInstanceUID)].path
        assert rows[str(deflated.SOPInstanceUID)].transfer_syntax_uid == uid.DeflatedExplicitVRLittleEndian
    # the data set exactly as sent (the receiver writes the File Meta group of the request)
    sent_data_set = bombs_data_set(sent[0])
    assert stored_deflated.read_bytes().endswith(sent_data_set)
    assert bombs_data_set(stored_deflated) == sent_data_set

    prep, opts, rules = Preprocessing(), DecodeOptions(), SelectionRules()
    a = prepare_view(stored_deflated, prep, opts, rules)
    b = prepare_view(stored_explicit, prep, opts, rules)
    assert a.error is None and b.error is None, (a.error, b.error)
    assert np.array_equal(a.tensor, b.tensor)
    assert a.geometry == b.geometry and a.study_type == b.study_type


def bombs_data_set(path: Path) -> bytes:
    from tests.dicom_io.malformed import dataset_of

    return dataset_of(path.read_bytes())


# -- finding 11: a SOP Instance UID belongs to one study and series ----------------------------


def _events(db: Database, kind: EventKind) -> list[Event]:
    with db.session() as s:
        rows = s.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)).all()
        for r in rows:
            s.expunge(r)
        return list(rows)


def _row(db: Database, sop_uid: str) -> tuple[str, str, str, int]:
    with db.session() as s:
        row = s.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
        assert row is not None
        return row.study.study_instance_uid, row.series_instance_uid, row.path, row.size_bytes


def _notes(storage: Path) -> list[str]:
    folder = storage / QUARANTINE_DIR
    return [p.read_text() for p in sorted(folder.glob("*.txt"))] if folder.is_dir() else []


@pytest.mark.parametrize("other", ["study", "series"])
def test_a_reused_sop_instance_uid_never_moves_to_another_study_or_series(
        receivers, tmp_path, raw_send, other):
    receiver, db = receivers()
    storage = tmp_path / "storage"
    alice = make_instance(StudySpec(views=1, rows=32, columns=32, patient_name="ALICE^A",
                                    patient_id="ALICE-1"), 0)
    bob = make_instance(StudySpec(views=1, rows=32, columns=32, seed=3, patient_name="BOB^B",
                                  patient_id="BOB-2"), 0)
    if other == "series":  # same study, another series
        bob.StudyInstanceUID = alice.StudyInstanceUID
        bob.PatientName, bob.PatientID = alice.PatientName, alice.PatientID
    bob.SOPInstanceUID = bob.file_meta.MediaStorageSOPInstanceUID = alice.SOPInstanceUID
    sop = str(alice.SOPInstanceUID)

    assert _store_files(receiver.port, [_save(alice, tmp_path / "in" / "a.dcm")]) == [0]
    before = _row(db, sop)
    alice_file = (storage / before[2]).read_bytes()

    assert _store_files(receiver.port, [_save(bob, tmp_path / "in" / "b.dcm")]) == [CONFLICT_STATUS]
    assert _row(db, sop) == before  # the row stays with its study, series, file and size
    assert (storage / before[2]).read_bytes() == alice_file
    assert not (storage / str(bob.StudyInstanceUID) / str(bob.SeriesInstanceUID)).exists()

    [event] = _events(db, EventKind.CONFLICT)
    with db.session() as s:
        assert event.study_id == s.scalar(select(Study.id).where(
            Study.study_instance_uid == str(alice.StudyInstanceUID)))
    assert sop in event.detail and str(bob.StudyInstanceUID) in event.detail
    assert str(bob.SeriesInstanceUID) in event.detail and str(alice.SeriesInstanceUID) in event.detail
    for phi in ("ALICE", "BOB"):
        assert phi not in event.detail
    [note] = _notes(storage)  # the second instance is kept apart, as received
    assert f"affected SOP instance: {sop}\n" in note and "belongs to" in note
    assert "ALICE" not in note and "BOB" not in note

    # the original study is still served, and a later identical re-send is still a duplicate
    assert _store_files(receiver.port, [tmp_path / "in" / "a.dcm"]) == [0]
    assert _row(db, sop) == before


def test_a_conflict_found_only_by_the_database_is_kept_apart_and_audited_too(
        receivers, tmp_path, raw_send, monkeypatch):
    """Two associations racing with one UID under two studies: both pass the first look, the
    database's unique constraint catches the second. It is refused, quarantined and audited
    like any conflict, and its file leaves the other study's folder."""
    receiver, db = receivers()
    storage = tmp_path / "storage"
    alice = make_instance(StudySpec(views=1, rows=32, columns=32), 0)
    bob = make_instance(StudySpec(views=1, rows=32, columns=32, seed=3), 0)
    bob.SOPInstanceUID = bob.file_meta.MediaStorageSOPInstanceUID = alice.SOPInstanceUID
    sop = str(alice.SOPInstanceUID)
    assert _store_files(receiver.port, [_save(alice, tmp_path / "in" / "a.dcm")]) == [0]
    before = _row(db, sop)

    real, looks = receiver._stored_under, []

    def racing(uid: str):  # type: ignore[no-untyped-def]
        looks.append(uid)
        return None if len(looks) == 1 else real(uid)  # the first look misses the stored row

    monkeypatch.setattr(receiver, "_stored_under", racing)
    assert _store_files(receiver.port, [_save(bob, tmp_path / "in" / "b.dcm")]) == [CONFLICT_STATUS]
    assert _row(db, sop) == before
    assert not list((storage / str(bob.StudyInstanceUID)).rglob("*.dcm"))
    [event] = _events(db, EventKind.CONFLICT)
    assert str(bob.StudyInstanceUID) in event.detail
    [note] = _notes(storage)
    assert "belongs to" in note


def test_other_bytes_under_the_same_uids_are_refused_kept_apart_and_audit_both_hashes(
        receivers, tmp_path, raw_send):
    """Issue 17: "the same rule holds for a UID reused with different bytes in the same study:
    an audit event records both hashes". The stored copy, which an SR already describes, stays."""
    receiver, db = receivers()
    storage = tmp_path / "storage"
    first = make_instance(StudySpec(views=1, rows=32, columns=32), 0)
    sop = str(first.SOPInstanceUID)
    assert _store_files(receiver.port, [_save(first, tmp_path / "in" / "first.dcm")]) == [0]
    before = _row(db, sop)
    path = storage / before[2]
    old = hashlib.sha256(path.read_bytes()).hexdigest()

    other = pydicom.dcmread(tmp_path / "in" / "first.dcm")
    other.SeriesDescription = "other"  # same UIDs, other bytes
    sent = _save(other, tmp_path / "in" / "second.dcm")
    comments: list[str] = []
    assert _store_files(receiver.port, [sent], comments=comments) == [0xC409]
    # the sender is told why, in the response's Error Comment (an LO: 64 characters)
    assert comments[0].startswith("InstanceConflict: SOP Instance UID") and len(comments[0]) <= 64
    assert hashlib.sha256(path.read_bytes()).hexdigest() == old  # the stored copy stays
    assert _row(db, sop) == before
    [event] = _events(db, EventKind.CONFLICT)
    assert old in event.detail and sop in event.detail
    new = hashlib.sha256(next(p for p in (storage / "quarantine").glob("*.dcm")).read_bytes()
                         ).hexdigest()
    assert new != old and new in event.detail  # the new copy is kept apart, as received
    assert "PHANTOM" not in event.detail
    # the same bytes again are still a duplicate
    assert _store_files(receiver.port, [tmp_path / "in" / "first.dcm"]) == [0]


# -- finding 13: control characters ------------------------------------------------------------


def test_control_characters_in_the_request_uid_forge_no_log_line_or_note_field(
        receivers, tmp_path, raw_send, caplog):
    receiver, db = receivers()
    storage = tmp_path / "storage"
    forged = "1.2.3\x00\nreason: forged\r1"  # pydicom strips trailing NULs and blanks
    ds = make_instance(StudySpec(views=1, rows=32, columns=32), 0)
    data_set = bombs.encode(ds)
    ds.SOPInstanceUID = forged  # only in the File Meta group: the request's Affected SOP Instance UID
    path = tmp_path / "in" / "forged.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(bombs.part10(ds, data_set, uid.ExplicitVRLittleEndian))
    with caplog.at_level(logging.DEBUG, logger="daemon.receiver"):
        assert _store_files(receiver.port, [path]) == [CANNOT_UNDERSTAND]

    records = [r for r in caplog.records if r.name.startswith("daemon")]
    assert records, "the refusal was not logged"
    for record in records:
        message = record.getMessage()
        assert "\n" not in message and "\x00" not in message and "\r" not in message, message
    assert any("\\x00\\nreason: forged\\r1" in r.getMessage() for r in records)

    [note] = _notes(storage)
    lines = note.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["calling AE", "affected SOP instance",
                                                          "reason"], note
    assert "\x00" not in note and "\r" not in note
    assert lines[1] == "affected SOP instance: 1.2.3\\x00\\nreason: forged\\r1"
    with db.session() as s:
        assert s.scalars(select(Instance)).all() == []
