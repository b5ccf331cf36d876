"""Issue 17, findings 5 to 9: a report is never lost to a header value.

Each study of the corpus (tests/dicom_io/odd_headers.py) goes through the pure builders as the
daemon calls them (``daemon.products.make_products``, every output on, an HL7 destination that
gets an order update and a result): it must get all of them, every DICOM object must pass
dciodvfy without an error its source did not already have, and every HL7 message must parse and
validate with hl7apy (``assert_valid`` of the HL7 tests).
"""
from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from daemon.config import parse_config
from daemon.products import ViewProduct, make_products
from dicom_io.sr import TriageReport, ViewScore
from tests.dicom_io.odd_headers import ENTRIES, MARKER, odd_study
from tests.dicom_io.test_hl7 import assert_valid, seg

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
DICOM_KINDS = ("SR", "SC", "KOS", "GSPS")
#: pydicom warns (and goes on) when it decodes the ESC of the control-character entry
ESCAPE_WARNING = "ignore:Found unknown escape sequence:UserWarning"


def _config(tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_config({
        "storage": {"path": str(tmp_path / "storage")},
        "report": {"summary": "study", "key_objects": True, "presentation_state": True},
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": 2575},
        ],
    }, base=tmp_path, environ={})


def make_all(tmp_path: Path, files: list[Path]) -> tuple[dict[str, list[bytes]], object]:
    """Every output of an abnormal, HIGH result over ``files`` (read as the worker reads them):
    kind -> the encoded objects, and what make_products returned."""
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    report = TriageReport(probability=0.9, abnormal=True, priority="HIGH", threshold=0.5,
                          algorithm_name="radtriage-test", algorithm_version="1.0",
                          views=tuple(ViewScore(u, 0.9, box=(4, 4, 20, 20)) for u in uids))
    views = [ViewProduct(u, 0.9, None, None, None, np.full((32, 32), 90, np.uint8),
                         (4, 4, 20, 20), f"view {n}") for n, u in enumerate(uids, 1)]
    made = make_products(_config(tmp_path), report, sources, views, device_observer_uid="1.2.3.4",
                         predecessor=None, hl7_raise_to={"ris": "HIGH"}, now=NOW)
    out: dict[str, list[bytes]] = {}
    for product in made:
        out.setdefault(product.kind, []).append(product.data)
    return out, made


# -- dciodvfy --------------------------------------------------------------------------------

def _dciodvfy(path: Path) -> set[str]:
    """dciodvfy's errors, without the values and lengths they quote (so that the same error on
    the same attribute reads the same in a source and in an output)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, errors="replace",
                          timeout=60)
    errors = set()
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("Error"):
            line = re.sub(r"= <.*> -", "= <value> -", line)
            errors.add(re.sub(r"for this VR = \d+", "for this VR = N", line))
    return errors - {"Error - Dicom dataset contains invalid data values for Value Representations"}


def assert_no_error_of_ours(tmp_path: Path, kind: str, data: bytes, source: Path) -> None:
    path = tmp_path / f"{kind}-{len(list(tmp_path.glob(f'{kind}-*')))}.dcm"
    path.write_bytes(data)
    ours = _dciodvfy(path) - _dciodvfy(source)
    assert not ours, f"{kind}: {sorted(ours)}"


def _read(data: bytes) -> pydicom.Dataset:
    from io import BytesIO

    return pydicom.dcmread(BytesIO(data))


# -- one test per finding --------------------------------------------------------------------

def test_finding_5_an_issuer_of_patient_id_of_24_characters(tmp_path: Path) -> None:
    """A legal LO, longer than HL7's IS (20): the messages are made, the issuer cut to 20."""
    files = odd_study(tmp_path / "in", "issuer_24")
    out, _ = make_all(tmp_path, files)
    assert sorted(out) == ["GSPS", "KOS", "ORM", "ORU", "SC", "SR"]
    for kind in ("ORM", "ORU"):
        er7 = out[kind][0].decode()
        assert_valid(er7)
        assert seg(er7, "PID").pid_3.cx_4.to_er7() == "HOSPITAL-NORTH-CAMPU"
    assert _read(out["SR"][0]).IssuerOfPatientID == "HOSPITAL-NORTH-CAMPUS-24"  # DICOM keeps it


def test_finding_6_a_multi_valued_patient_name(tmp_path: Path) -> None:
    """DOE^JOHN\\SMITH^JANE: each DICOM output keeps one valid name, HL7 gets both names as
    repetitions of PID-5."""
    files = odd_study(tmp_path / "in", "multi_valued")
    out, _ = make_all(tmp_path, files)
    assert sorted(out) == ["GSPS", "KOS", "ORM", "ORU", "SC", "SR"]
    for kind in DICOM_KINDS:
        ds = _read(out[kind][0])
        assert str(ds.PatientName) == f"{MARKER}^JOHN", kind
        assert ds.PatientID == f"{MARKER}-1", kind
        assert_no_error_of_ours(tmp_path, kind, out[kind][0], files[0])
    er7 = out["ORU"][0].decode()
    assert_valid(er7)
    pid = next(s for s in er7.split("\r") if s.startswith("PID|"))
    assert pid.split("|")[5] == f"{MARKER}^JOHN~SMITH^JANE"
    assert pid.split("|")[3] == f"{MARKER}-1^^^NORTH~{MARKER}-2"


def test_finding_7_patient_sex_outside_its_enumerated_values(tmp_path: Path) -> None:
    files = odd_study(tmp_path / "in", "enumerations")
    out, made = make_all(tmp_path, files)
    assert set(DICOM_KINDS) <= set(out)
    for kind in DICOM_KINDS:
        ds = _read(out[kind][0])
        assert ds.PatientSex in ("", None), kind  # Type 2: present, empty
        assert_no_error_of_ours(tmp_path, kind, out[kind][0], files[0])
    notes = " ".join(str(n) for n in getattr(made, "notes", ()))
    assert "PatientSex dropped" in notes and "NOT_LISTED" not in notes and "'Q'" not in notes


@pytest.mark.parametrize("birth_date", ["19790230", "1979-02-15"])
def test_finding_8_a_birth_date_that_is_no_date(tmp_path: Path, birth_date: str) -> None:
    files = odd_study(tmp_path / "in", "issuer_24")
    for f in files:
        ds = pydicom.dcmread(f)
        ds[0x00100030] = pydicom.dataelem.RawDataElement(
            0x00100030, "DA", len(birth_date), birth_date.encode(), 0, False, True)
        ds.save_as(f, enforce_file_format=True)
    out, made = make_all(tmp_path, files)
    assert sorted(out) == ["GSPS", "KOS", "ORM", "ORU", "SC", "SR"]
    for kind in DICOM_KINDS:
        assert _read(out[kind][0]).PatientBirthDate in ("", None), kind
        assert_no_error_of_ours(tmp_path, kind, out[kind][0], files[0])
    assert all(birth_date not in str(n) for n in getattr(made, "notes", ()))


@pytest.mark.filterwarnings(ESCAPE_WARNING)
def test_finding_9_backslashes_and_line_separators(tmp_path: Path) -> None:
    """A value with a backslash is several values: never the Python repr of a list in HL7. Raw
    U+2028 and U+0085 (and every other control character) reach no output."""
    files = odd_study(tmp_path / "in", "controls")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyDescription = "XR HAND\\XR WRIST"
        ds.save_as(f, enforce_file_format=True)
    out, _ = make_all(tmp_path, files)
    assert sorted(out) == ["GSPS", "KOS", "ORM", "ORU", "SC", "SR"]
    orm = out["ORM"][0].decode()
    assert "['" not in orm and "MultiValue" not in orm
    assert seg(orm, "OBR").obr_4.to_er7() == "^XR HAND / XR WRIST"
    controls = re.compile("[\x00-\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
    for kind in ("ORM", "ORU"):
        text = out[kind][0].decode()
        assert_valid(text)
        assert not controls.search(text), kind  # CR only as the segment end
        assert seg(text, "PID").pid_5.to_er7() == f"{MARKER} X^JO HN"
    for kind in DICOM_KINDS:
        ds = _read(out[kind][0])
        assert "\u2028" not in str(ds.PatientName) and "\x85" not in str(ds.PatientName)
        assert str(ds.PatientName) == f"{MARKER} X^JO HN", kind


# -- the corpus ------------------------------------------------------------------------------

@pytest.mark.filterwarnings(ESCAPE_WARNING)
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_odd_header_gets_every_output(tmp_path: Path, entry: str) -> None:
    files = odd_study(tmp_path / "in", entry)
    out, made = make_all(tmp_path, files)
    expected = ["GSPS", "KOS", "ORM", "ORU", "SC", "SR"]
    if entry == "enumerations":  # its order is URGENT: a term radtriage does not know is
        expected.remove("ORM")   # taken as the most urgent, so it is never raised
    assert sorted(out) == expected, [str(f) for f in made.failures]
    failures = [f for f in made.failures if not (entry == "enumerations" and f.kind == "ORM")]
    assert failures == []
    for kind in DICOM_KINDS:
        for data in out[kind]:
            assert_no_error_of_ours(tmp_path, kind, data, files[0])
            ds = _read(data)
            assert str(ds.StudyInstanceUID) == str(pydicom.dcmread(files[0]).StudyInstanceUID)
    for kind in ("ORM", "ORU"):
        for data in out.get(kind, []):
            assert_valid(data.decode("utf-8"))
