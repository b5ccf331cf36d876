"""An uploaded file cut short is reported truncated, with where, never "modality (none)"
(issue 18, item 6; ``tests/dicom_io/test_truncated_files.py`` has the details)."""

from __future__ import annotations

from pathlib import Path

from tests.dicom_io.truncated import ENCODINGS, source, write_truncated
from tests.web.conftest import TOKEN, make_client

BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: the issue's file and three more, as pydicom alone writes them
NAMES = ("JPEG2000Lossless", "JPEG2000", "ExplicitVRLittleEndian", "DeflatedExplicitVRLittleEndian")


def test_an_uploaded_truncated_file_says_so(sqlite_site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = source(seed=7)
    encodings = tuple(e for e in ENCODINGS if e.name in NAMES and e.tool == "pydicom")
    cut = write_truncated(tmp_path / "cut", "pixels", encodings, ds=ds)
    good = tmp_path / "good.dcm"
    ds.save_as(good, enforce_file_format=True)
    files = [("files", ("good.dcm", good.read_bytes(), "application/dicom"))]
    files += [("files", (f"{name}.dcm", path.read_bytes(), "application/dicom")) for name, path in cut.items()]
    r = make_client(sqlite_site).post("/api/upload", files=files, headers=BEARER)
    assert r.status_code == 200, r.text
    body = r.json()
    views = {v["name"]: v for s in body["studies"] for v in s["views"]}
    views.update({v["name"]: v for v in body["refused"]})
    assert views["good.dcm"].get("error") is None
    for name in cut:
        error = views[f"{name}.dcm"]["error"]
        assert error and "truncated" in error and "modality" not in error.lower(), (name, error)
