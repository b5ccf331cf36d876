"""The Storage SCP in-process on a free port (pynetdicom's own test style), with a pynetdicom SCU."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage
from sqlalchemy import func, select, text

from db import Instance
from tests.conftest import write_study

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver_factory(receivers, db_url: str):
    def make(migrate: bool = True, min_free_mb: int = 0):  # type: ignore[no-untyped-def]
        return receivers(db_url=db_url, migrate=migrate, storage={"min_free_mb": min_free_mb})

    return make


def _send(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADTRIAGE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_database_failure_answers_failure_and_leaves_no_file(receiver_factory, tmp_path):
    """No schema (as good as an unreachable database): 0x0110 for each, association goes on."""
    receiver, _ = receiver_factory(migrate=False)
    datasets = [pydicom.dcmread(p) for p in write_study(tmp_path / "in", views=2, rows=32, columns=32)]
    assert _send(receiver.port, datasets) == [0x0110, 0x0110]
    assert _files(tmp_path / "storage") == []  # nothing half-written, no temporary left


def test_store_is_durable_and_idempotent(receiver_factory, tmp_path):
    receiver, db = receiver_factory()
    datasets = [pydicom.dcmread(p) for p in write_study(tmp_path / "in", views=2, rows=32, columns=32)]
    assert _send(receiver.port, datasets) == [0, 0]
    assert _send(receiver.port, datasets[:1]) == [0]  # re-sent: Success, nothing new
    with db.session() as s:
        rows = s.scalars(select(Instance)).all()
        assert len(rows) == 2
        for row in rows:
            path = tmp_path / "storage" / row.path
            assert path.stat().st_size == row.size_bytes
            assert pydicom.dcmread(path).SOPInstanceUID == row.sop_instance_uid
        assert s.execute(text("select count(*) from event where kind = 'duplicate'")).scalar() == 1
        assert s.scalar(select(func.count()).select_from(Instance)) == 2
    assert not list((tmp_path / "storage" / ".tmp").iterdir())


def test_full_disk_is_refused_with_out_of_resources(receiver_factory, tmp_path, monkeypatch):
    receiver, db = receiver_factory(min_free_mb=100)
    monkeypatch.setattr("daemon.receiver.free_bytes", lambda root: 99 * 1024 * 1024)
    datasets = [pydicom.dcmread(p) for p in write_study(tmp_path / "in", views=1, rows=32, columns=32)]
    assert _send(receiver.port, datasets) == [0xA700]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
