"""Issue 17: each output is made and recorded on its own (one cannot take the others with it),
and finding 12: a failure's reason, event and log line name the error's type and the attribute,
never a value from the headers, unless ``logging.phi`` is true.

The builders are made to fail as a library would (pydicom refusing a birth date, whose message
quotes it); what the study gets is checked in the database, on disk and in the log.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from daemon.config import parse_config
from daemon.worker import ScoringWorker, StudyScorer
from db import Event, EventKind, OutputObject, Study, StudyResult, StudyState
from tests.fakes import HeatmapScorer
from tests.unit.test_worker import _setup

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
BIRTH_DATE = "1979-02-15"  # what pydicom's message quotes


def _config(tmp_path: Path, *, phi: bool = False):  # type: ignore[no-untyped-def]
    return parse_config({
        "storage": {"path": str(tmp_path / "storage")},
        "decoding": {"workers": 1},
        "logging": {"phi": phi},
        "report": {"summary": "study", "key_objects": True, "presentation_state": True},
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            {"name": "ris", "type": "hl7", "host": "127.0.0.1", "port": 2575},
        ],
    }, base=tmp_path, environ={})


def _convert_birth_date(*args: object, **kwargs: object) -> None:
    """Fail as pydicom does on a birth date that is not a DA (its message quotes the value)."""
    pydicom.valuerep.DA(BIRTH_DATE)


def _score(tmp_path: Path, database, *, phi: bool = False) -> int:  # type: ignore[no-untyped-def]
    scorer = StudyScorer(_config(tmp_path, phi=phi), database, HeatmapScorer(0.9),
                         clock=lambda: NOW)
    try:
        assert ScoringWorker(scorer).run_once()
    finally:
        scorer.close()
    with database.session() as s:
        return s.scalar(select(Study.id))


def _events(database, kind: EventKind) -> list[str]:  # type: ignore[no-untyped-def]
    with database.session() as s:
        return list(s.scalars(select(Event.detail).where(Event.kind == kind)))


def _outputs(database) -> list[str]:  # type: ignore[no-untyped-def]
    with database.session() as s:
        return sorted(s.scalars(select(OutputObject.kind)))


@pytest.mark.usefixtures("restore_logging")
def test_finding_12_a_conversion_error_leaves_no_value_in_reason_events_or_log(
        tmp_path: Path, database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from daemon.logs import setup_logging

    setup_logging("DEBUG", phi=False, file=tmp_path / "radtriage.log")  # the daemon's handler
    _setup(tmp_path, database)
    monkeypatch.setattr("daemon.worker.make_products", _convert_birth_date)
    study_id = _score(tmp_path, database)
    with database.session() as s:
        study = s.get(Study, study_id)
        assert study.state == StudyState.FAILED
        assert study.state_reason == "ValueError in pydicom.valuerep"
    assert _events(database, EventKind.FAILED) == ["ValueError in pydicom.valuerep"]
    for h in logging.getLogger().handlers:
        h.flush()
    text = (tmp_path / "radtriage.log").read_text()
    assert BIRTH_DATE not in text and "ValueError in pydicom.valuerep" in text
    assert "_convert_birth_date" in text  # the traceback's frames are still logged
    assert "message withheld: logging.phi is false" in text


@pytest.mark.phi_allowed
def test_finding_12_with_logging_phi_the_message_is_kept(tmp_path: Path, database,
                                                         monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    _setup(tmp_path, database)
    monkeypatch.setattr("daemon.worker.make_products", _convert_birth_date)
    study_id = _score(tmp_path, database, phi=True)
    with database.session() as s:
        assert BIRTH_DATE in s.get(Study, study_id).state_reason
    assert BIRTH_DATE in caplog.text


def test_a_failing_kos_leaves_the_sr_and_the_other_outputs(tmp_path: Path, database,
                                                          monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    _setup(tmp_path, database)
    monkeypatch.setattr("dicom_io.outputs.build_kos", _convert_birth_date)
    study_id = _score(tmp_path, database)
    assert _outputs(database) == ["GSPS", "ORM", "ORU", "SC", "SR"]
    with database.session() as s:
        study = s.get(Study, study_id)
        assert study.state == StudyState.DISPATCHING and study.state_reason is None
    assert _events(database, EventKind.OUTPUT_FAILED) == ["KOS not made: ValueError in pydicom.valuerep"]
    assert BIRTH_DATE not in caplog.text


def test_a_failing_hl7_message_leaves_the_others(tmp_path: Path, database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _setup(tmp_path, database)
    monkeypatch.setattr("dicom_io.hl7.build_result", _convert_birth_date)
    _score(tmp_path, database)
    assert _outputs(database) == ["GSPS", "KOS", "ORM", "SC", "SR"]
    assert _events(database, EventKind.OUTPUT_FAILED) == [
        "ORU for ris not made: ValueError in pydicom.valuerep"]


def test_an_order_priority_that_cannot_be_read_costs_only_the_order_update(
        tmp_path: Path, database, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """The never-lower rule reads the order's own priority before the outputs are made: if
    that read fails, no order update goes out (never risk lowering it), the rest does."""
    _setup(tmp_path, database)
    monkeypatch.setattr("daemon.products.hl7_order", _convert_birth_date)
    study_id = _score(tmp_path, database)
    assert "SR" in _outputs(database) and "ORM" not in _outputs(database)
    with database.session() as s:
        assert s.get(Study, study_id).state == StudyState.DISPATCHING
    assert BIRTH_DATE not in caplog.text and "no order update is sent" in caplog.text


def test_an_sr_that_cannot_be_made_from_the_headers_is_made_without_them(
        tmp_path: Path, database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Never silence: the study is still reported, by an SR the PACS files under its UIDs."""
    import daemon.products

    real = daemon.products.build_triage_sr

    def picky(report, sources, **kwargs):  # type: ignore[no-untyped-def]
        if sources[0].get("PatientName"):
            _convert_birth_date()
        return real(report, sources, **kwargs)

    monkeypatch.setattr(daemon.products, "build_triage_sr", picky)
    _setup(tmp_path, database)
    _score(tmp_path, database)
    assert "SR" in _outputs(database)
    [event] = _events(database, EventKind.OUTPUT_FAILED)
    assert event.startswith("SR made without the study's patient and study attributes: "
                            "ValueError in pydicom.valuerep")
    with database.session() as s:
        result = s.scalar(select(StudyResult))
        sr = pydicom.dcmread(tmp_path / "storage" / result.sr_path)
        study_uid = s.scalar(select(Study.study_instance_uid))
    assert sr.StudyInstanceUID == study_uid and not sr.PatientName and not sr.PatientID


def test_cleaned_values_are_on_record_without_them(tmp_path: Path, database) -> None:  # type: ignore[no-untyped-def]
    _, files = _setup(tmp_path, database)
    with database.session() as s:
        for path in s.scalars(select(Study)).one().instances:
            ds = pydicom.dcmread(tmp_path / "storage" / path.path)
            ds.PatientSex = "Q"
            ds.save_as(tmp_path / "storage" / path.path, enforce_file_format=True)
    _score(tmp_path, database)
    [event] = _events(database, EventKind.CLEANED)
    assert event == "header values cleaned for the outputs: PatientSex dropped: not one of its " \
                    "enumerated values"


def test_describe_names_the_type_the_place_and_the_attribute_never_the_value() -> None:
    from dicom_io.errors import OutputError, describe

    try:  # as pydicom words an error on one element: the tag, then the value
        raise ValueError(f"With tag (0010,0030) got exception: Unable to convert '{BIRTH_DATE}'")
    except ValueError as exc:
        assert describe(exc) == f"ValueError in {__name__} (PatientBirthDate)"
        assert BIRTH_DATE in describe(exc, phi=True)
    assert describe(OutputError("no accession number")) == "OutputError: no accession number"
