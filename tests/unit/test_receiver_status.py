"""daemon.receiver: which DIMSE status answers which failure, and the header check."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, Status, code_to_category
from sqlalchemy.exc import OperationalError, SQLAlchemyError

import daemon.receiver as receiver
from daemon.receiver import STATUS_FOR, ReceivedHeader, read_header, status_for
from dicom_io.errors import InvalidInstance, StorageError, StorageFull, UnsupportedInstance
from dicom_io.synthetic import DX_PRESENTATION_STORAGE, StudySpec, make_instance


@pytest.mark.parametrize(("cls", "code"), STATUS_FOR, ids=[c.__name__ for c, _ in STATUS_FOR])
def test_each_exception_maps_to_its_code(cls: type[BaseException], code: int) -> None:
    exc = cls("x") if cls is not OSError else OSError(5, "I/O error")
    assert status_for(exc) == int(code)
    assert isinstance(status_for(exc), int)


@pytest.mark.parametrize("code", sorted({int(c) for _, c in STATUS_FOR}), ids=hex)
def test_every_code_is_a_storage_failure(code: int) -> None:
    assert code_to_category(code) == "Failure"
    assert STORAGE_SERVICE_CLASS_STATUS[code][0] == "Failure"


def test_specific_codes() -> None:
    assert status_for(StorageFull("disk")) == 0xA700          # Refused: Out of Resources
    assert status_for(UnsupportedInstance("mf")) == 0xA900    # Data Set Does Not Match SOP Class
    assert status_for(InvalidInstance("bad")) == 0xC000       # Cannot Understand
    assert status_for(StorageError("io")) == 0x0110           # Processing Failure
    assert status_for(OperationalError("select", {}, Exception("db down"))) == 0x0110
    assert status_for(PermissionError(13, "denied")) == 0x0110


def test_unknown_exception_is_a_processing_failure() -> None:
    assert status_for(RuntimeError("?")) == 0x0110
    assert status_for(KeyError("?")) == 0x0110


def test_no_class_is_shadowed_by_an_earlier_one() -> None:
    classes = [c for c, _ in STATUS_FOR]
    for i, later in enumerate(classes):
        for earlier in classes[:i]:
            if issubclass(later, earlier):
                assert dict(STATUS_FOR)[later] == dict(STATUS_FOR)[earlier], (later, earlier)


def test_every_status_name_used_is_registered() -> None:
    source = Path(receiver.__file__).read_text(encoding="utf-8")
    names = set(re.findall(r"\bStatus\.([A-Z][A-Z0-9_]*)\b", source))
    assert {"OUT_OF_RESOURCES", "CANNOT_UNDERSTAND", "SUCCESS"} <= names
    for name in names:
        assert isinstance(getattr(Status, name), int), name
    assert Status.OUT_OF_RESOURCES == 0xA700
    assert Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert Status.CANNOT_UNDERSTAND == 0xC000
    assert Status.PROCESSING_FAILURE == 0x0110
    assert Status.SUCCESS == 0x0000


# -- read_header ---------------------------------------------------------------------------------


@pytest.fixture
def instance(tmp_path: Path) -> tuple[Path, Dataset]:
    ds = make_instance(StudySpec(views=1, modality="DX", accession_number="ACC42"), 0)
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def test_read_header_matching(instance: tuple[Path, Dataset]) -> None:
    path, ds = instance
    header = read_header(path, sop_uid=ds.SOPInstanceUID, sop_class_uid=DX_PRESENTATION_STORAGE)
    assert header == ReceivedHeader(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                                    sop_uid=ds.SOPInstanceUID, sop_class_uid=DX_PRESENTATION_STORAGE,
                                    modality="DX", accession_number="ACC42")


def test_read_header_other_sop_instance(instance: tuple[Path, Dataset]) -> None:
    path, _ = instance
    with pytest.raises(InvalidInstance, match="SOP Instance UID"):
        read_header(path, sop_uid="1.2.3.4", sop_class_uid=DX_PRESENTATION_STORAGE)


def test_read_header_other_sop_class(instance: tuple[Path, Dataset]) -> None:
    path, ds = instance
    with pytest.raises(UnsupportedInstance, match="SOP Class UID"):
        read_header(path, sop_uid=ds.SOPInstanceUID, sop_class_uid="1.2.840.10008.5.1.4.1.1.1")


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_read_header_bad_study_uid(tmp_path: Path) -> None:
    ds = make_instance(StudySpec(views=1), 0)
    ds.StudyInstanceUID = "../../etc"
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidInstance, match="StudyInstanceUID"):
        read_header(path, sop_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID)


@pytest.mark.parametrize("content", [b"", b"not dicom at all" * 10])
def test_read_header_not_dicom(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(content)
    with pytest.raises(InvalidInstance):
        read_header(path, sop_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.1")


def test_errors_are_not_confused_with_storage_errors() -> None:
    # a bad instance must never be answered Out of Resources (the PACS would retry forever)
    assert not issubclass(InvalidInstance, (StorageFull, OSError, SQLAlchemyError))
    assert not issubclass(UnsupportedInstance, (StorageFull, OSError, SQLAlchemyError))
