"""Urgent studies: marked at arrival from what the sender says, claimed first, never starving
the rest (``urgency:`` in the config; the claim order is tested in tests/unit/test_worker.py, the
engine's in tests/inference/test_engine.py)."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from sqlalchemy import select

from daemon.config import UrgencyConfig
from daemon.receiver import urgency_reason
from db import Study
from tests.conftest import write_study


def test_the_urgency_rule() -> None:
    rules = UrgencyConfig(calling_ae_titles=["ED_CR1"])
    assert urgency_reason(rules, c_store_priority=2, procedure_priority=None, calling="PACS") \
        == "C-STORE priority HIGH"
    assert urgency_reason(rules, c_store_priority=0, procedure_priority="STAT", calling="PACS") \
        == "requested procedure priority STAT"
    assert urgency_reason(rules, c_store_priority=1, procedure_priority="ROUTINE", calling="ED_CR1") \
        == "calling AE ED_CR1"
    assert urgency_reason(rules, c_store_priority=0, procedure_priority="ROUTINE", calling="PACS") is None
    off = UrgencyConfig(c_store_priority=False, procedure_priorities=[])
    assert urgency_reason(off, c_store_priority=2, procedure_priority="STAT", calling="ED_CR1") is None


def _send(port: int, files: list[Path], priority: int, calling: str = "MODALITY") -> None:
    ae = AE(ae_title=calling)
    ae.add_requested_context(pydicom.dcmread(files[0]).SOPClassUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADTRIAGE")
    assert assoc.is_established
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f), priority=priority)
            assert status.Status == 0
    finally:
        assoc.release()


def test_a_study_is_urgent_when_the_sender_says_so(receivers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    receiver, db = receivers(urgency={"calling_ae_titles": ["ED_CR1"]})
    routine = write_study(tmp_path / "routine", views=2, rows=32, columns=32)
    high = write_study(tmp_path / "high", views=2, rows=32, columns=32)
    stat = write_study(tmp_path / "stat", views=1, rows=32, columns=32)
    ds = pydicom.dcmread(stat[0])
    item = Dataset()
    item.RequestedProcedurePriority = "STAT"
    ds.RequestAttributesSequence = [item]
    ds.save_as(stat[0])
    ed = write_study(tmp_path / "ed", views=1, rows=32, columns=32)
    _send(receiver.port, routine, priority=0)
    _send(receiver.port, high[:1], priority=0)
    _send(receiver.port, high[1:], priority=2)   # one HIGH instance makes the study urgent
    _send(receiver.port, stat, priority=1)
    _send(receiver.port, ed, priority=0, calling="ED_CR1")
    uid = lambda files: pydicom.dcmread(files[0]).StudyInstanceUID  # noqa: E731
    with db.session() as s:
        by_uid = {st.study_instance_uid: (st.urgent, st.urgent_reason) for st in s.scalars(select(Study))}
    assert by_uid[uid(routine)] == (False, None)
    assert by_uid[uid(high)] == (True, "C-STORE priority HIGH")
    assert by_uid[uid(stat)] == (True, "requested procedure priority STAT")
    assert by_uid[uid(ed)] == (True, "calling AE ED_CR1")
