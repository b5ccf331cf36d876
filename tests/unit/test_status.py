"""daemon.status: what ``radtriage status`` prints, quarantined files included (issue 18, item 10)."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import yaml

from daemon.status import read_quarantine, render_status

T0 = dt.datetime(2026, 5, 6, 8, 0, 0, tzinfo=dt.timezone.utc)


def quarantine(root: Path, at: dt.datetime, calling: str, sop_uid: str, reason: str) -> str:
    """Quarantine a file as the receiver does (its own method: the note is the receiver's
    format, not a copy of it); return where it went."""
    from daemon.config import parse_config
    from daemon.receiver import Receiver
    from dicom_io.storage import write_temp

    config = parse_config({"storage": {"path": str(root)}}, environ={})
    receiver = Receiver(config, db=None, clock=lambda: at)  # type: ignore[arg-type]
    tmp, _ = write_temp(root, [b"not a data set"])
    return receiver._quarantine(tmp, sop_uid, calling, reason)


def test_no_quarantine_folder_is_none_quarantined(tmp_path: Path) -> None:
    q = read_quarantine(tmp_path)
    assert q.count == 0 and q.newest == []


def test_quarantined_files_are_counted_newest_first_with_their_notes(tmp_path: Path) -> None:
    quarantine(tmp_path, T0, "MODALITY1", "1.2.3.4", "the data set cannot be parsed: truncated")
    quarantine(tmp_path, T0 + dt.timedelta(hours=2), "PACS", "1.2.3.5",
               "SOP Instance UID 1.2.3.5 is stored with other bytes\nforged: line")
    quarantine(tmp_path, T0 + dt.timedelta(hours=1), "ROUTER", "1.2.3.6", "no pixel data")
    (tmp_path / "quarantine" / "stray.txt").write_text("a note without its file")
    q = read_quarantine(tmp_path, limit=2)
    assert q.count == 3 and q.folder == tmp_path / "quarantine"
    assert [f.calling_ae for f in q.newest] == ["PACS", "ROUTER"]
    newest = q.newest[0]
    assert newest.at == T0 + dt.timedelta(hours=2)
    assert newest.sop_instance_uid == "1.2.3.5"
    # the receiver escaped the newline: one field cannot forge another
    assert newest.reason == "SOP Instance UID 1.2.3.5 is stored with other bytes\\nforged: line"
    assert newest.name.endswith(".dcm")


def test_a_file_without_its_note_is_still_counted(tmp_path: Path) -> None:
    folder = tmp_path / "quarantine"
    folder.mkdir()
    (folder / "20260506T090000-0123abcd.dcm").write_bytes(b"x")
    [f] = read_quarantine(tmp_path).newest
    assert f.at == T0 + dt.timedelta(hours=1) and f.calling_ae is None
    assert f.reason == "no note beside the file"


def test_status_shows_the_quarantine(tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    assert "quarantine: none" in render_status(database, storage=tmp_path)
    quarantine(tmp_path, T0, "MODALITY1", "1.2.3.4", "the data set cannot be parsed: truncated")
    quarantine(tmp_path, T0 + dt.timedelta(minutes=5), "PACS", "1.2.3.5", "no pixel data")
    text = render_status(database, storage=tmp_path)
    assert f"quarantine: 2 file(s) in {tmp_path / 'quarantine'}" in text
    [newest] = [line for line in text.splitlines() if "from PACS" in line]
    assert "2026-05-06 08:05:00" in newest and "no pixel data" in newest
    assert "from MODALITY1" in text and "truncated" in text


def test_status_command_reads_the_configured_storage(tmp_path: Path) -> None:
    from daemon.cli import main

    storage = tmp_path / "storage"
    path = tmp_path / "radtriage.yaml"
    path.write_text(yaml.safe_dump({"storage": {"path": str(storage)},
                                    "database": {"url": f"sqlite:///{tmp_path / 'r.db'}"}}))
    quarantine(storage, T0, "MODALITY1", "1.2.3.4", "the data set cannot be parsed")
    out = io.StringIO()
    assert main(["status", "--config", str(path)], out=out, err=io.StringIO()) == 0
    assert "quarantine: 1 file(s)" in out.getvalue() and "from MODALITY1" in out.getvalue()
