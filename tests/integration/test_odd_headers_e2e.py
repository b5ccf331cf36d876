"""Issue 17, findings 5 to 9 through the real daemon: studies with legal-but-odd headers are
answered Success by the daemon, and each then gets its SR, summary image, KOS and GSPS at the
PACS (DCMTK's storescp) and its HL7 messages at the RIS (hl7apy's MLLP server), none lost to a
header value, and no patient name in the daemon's log.

The whole corpus goes through the pure builders in tests/dicom_io/test_odd_headers.py; here a
handful of it goes end to end (the small plumbing model at 64 px keeps it quick).
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from db import Database, Event, EventKind, Instance, OutputObject, Study, StudyResult, StudyState
from tests.conftest import free_port
from tests.dicom_io.odd_headers import MARKER, odd_study
from tests.dicom_io.test_hl7 import RIS, assert_valid
from tests.integration.conftest import storescu, wait_for

pytestmark = pytest.mark.integration

ENTRIES = ("multi_valued", "enumerations", "dates", "controls", "japanese", "issuer_24")


def test_odd_headers_are_answered_success_and_every_study_gets_its_outputs(
        make_daemon, small_checkpoint, pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    studies = {e: odd_study(tmp_path / "in" / e, e, seed=n) for n, e in enumerate(ENTRIES)}
    study_uids = {e: str(pydicom.dcmread(f[0]).StudyInstanceUID) for e, f in studies.items()}
    ris_port = free_port()
    with RIS(ris_port) as ris:
        daemon = make_daemon(
            checkpoint=small_checkpoint, preprocessing={"size": 64},
            destinations=pacs.as_destination(objects=None) + [
                {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": ris_port}],
            report={"summary": "study", "key_objects": True, "presentation_state": True},
            logging={"level": "DEBUG", "file": "radtriage.log"},
        ).start()
        for files in studies.values():  # one association each: answered Success, all of them
            storescu(daemon.port, files)
        db = Database(daemon.db_url)
        try:
            with db.session() as s:
                assert s.scalar(select(func.count()).select_from(Instance)) == 2 * len(ENTRIES)

            def all_delivered() -> bool:
                with db.session() as s:
                    states = s.scalars(select(Study.state)).all()
                    return len(states) == len(ENTRIES) and all(
                        st in (StudyState.DELIVERED, StudyState.FAILED) for st in states)

            wait_for(all_delivered, 120, "every study delivered")
            with db.session() as s:
                assert {st.state for st in s.scalars(select(Study))} == {StudyState.DELIVERED}
                assert s.scalars(select(Event.detail).where(Event.kind.in_(
                    (EventKind.FAILED, EventKind.OUTPUT_FAILED)))).all() == []
                made = {(r.study.study_instance_uid, o.kind)
                        for r in s.scalars(select(StudyResult)) for o in r.outputs}
                messages = s.scalar(select(func.count()).select_from(OutputObject).where(
                    OutputObject.kind.in_(("ORM", "ORU"))))
            wait_for(lambda: len(ris.received) >= messages, 30, "the HL7 messages at the RIS")
        finally:
            db.dispose()
            assert daemon.stop() == 0, daemon.output()
    at_pacs = {}
    for path in pacs.files():
        ds = pydicom.dcmread(path)
        at_pacs.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.Modality))
    for entry, uid in study_uids.items():
        assert {"SR", "OT"} <= at_pacs.get(uid, set()), entry  # the SR and the summary (SC: OT)
        assert {kind for u, kind in made if u == uid} >= {"SR", "SC", "ORU"}, entry
    # every DICOM object radtriage made went to the PACS, every HL7 message to the RIS
    assert sum(len(v) for v in at_pacs.values()) == len([k for _, k in made if k not in ("ORM", "ORU")])
    assert len(ris.received) == messages >= len(ENTRIES)
    for message in ris.received:
        assert_valid(message.replace("\n", "\r").rstrip("\r") + "\r")
    log = (daemon.workdir / "radtriage.log").read_text(errors="replace")
    log += (daemon.workdir / "stderr.log").read_text(errors="replace")
    assert MARKER not in log and "19790230" not in log and "1979-02-15" not in log
