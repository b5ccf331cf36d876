"""dicom_io.demographics: header values made safe for the outputs, one rule per problem, each
noted by keyword and never by value."""
from __future__ import annotations

import warnings
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_io.demographics import (
    CLEANED_KEYWORDS,
    clean_dataset,
    declare_character_set,
    minimal_dataset,
    output_character_set,
    strip_controls,
    text_values,
)
from dicom_io.synthetic import StudySpec, make_instance


def _read(ds: Dataset) -> Dataset:
    """``ds`` as the worker sees it: written and read back without pixels (pydicom's warnings
    about the odd values written on purpose are silenced)."""
    buf = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf, stop_before_pixels=True)


@pytest.fixture
def instance() -> Dataset:
    return make_instance(StudySpec(rows=8, columns=8), 0)


def test_the_attributes_highdicom_copies_are_cleaned() -> None:
    assert {"PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
            "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "StudyDate",
            "StudyTime", "InstitutionName", "Manufacturer", "Laterality",
            "RequestAttributesSequence", "OtherPatientIDsSequence"} <= CLEANED_KEYWORDS
    assert "SOPInstanceUID" not in CLEANED_KEYWORDS and "PixelData" not in CLEANED_KEYWORDS


def test_control_characters_become_spaces() -> None:
    assert strip_controls("A\x00B\x1cC\x7fD\x85E\u2028F\u2029G\x9fH") == "A B C D E F G H"
    assert strip_controls("one\r\ntwo\x0cthree\tfour", free_text=True) == "one\r\ntwo\x0cthree four"


def test_each_problem_is_cleaned_and_noted_by_keyword_only(instance: Dataset) -> None:
    instance.SpecificCharacterSet = "ISO_IR 192"
    instance.PatientName = "DOE^JOHN\\SMITH^JANE"
    instance.PatientID = "ID-1\\ID-2"
    instance.StudyDescription = "XR HAND\\XR WRIST"
    instance.PatientSex = "Q"
    instance.InstitutionName = "North\u2028Hospital"
    instance.IssuerOfPatientID = "I" * 64
    instance[0x00100030] = pydicom.dataelem.RawDataElement(
        0x00100030, "DA", 8, b"19790230", 0, False, True)
    source = _read(instance)
    cleaned = clean_dataset(source)
    ds = cleaned.dataset
    assert str(ds.PatientName) == "DOE^JOHN" and ds.PatientID == "ID-1"
    assert ds.StudyDescription == "XR HAND / XR WRIST"
    assert ds.PatientSex is None and ds.PatientBirthDate is None  # present, empty (Type 2)
    assert ds.InstitutionName == "North Hospital" and ds.IssuerOfPatientID == "I" * 64
    notes = sorted(str(n) for n in cleaned.notes)
    assert notes == sorted([
        "StudyDescription had 2 values, now joined into one",
        "InstitutionName had control characters, now spaces",
        "PatientName had 2 values, only the first one kept",
        "PatientID had 2 values, only the first one kept",
        "PatientBirthDate dropped: not a calendar date",
        "PatientSex dropped: not one of its enumerated values",
    ])
    # the source is as it was, the copy shares its other elements, and a second pass is a no-op
    assert len(source.PatientName) == 2 and source.PatientSex == "Q"
    assert ds.SOPInstanceUID == source.SOPInstanceUID and ds.Rows == source.Rows
    assert clean_dataset(ds).notes == ()


@pytest.mark.parametrize("keyword, value, kept", [
    ("PatientBirthDate", "1979-02-15", None), ("PatientBirthDate", "20240229", "20240229"),
    ("StudyTime", "12:30:00", None), ("StudyTime", "123000.5", "123000.5"),
    ("PatientAge", "42", None), ("PatientAge", "042Y", "042Y"),
    ("PatientSex", "m", None), ("PatientSex", "F", "F"),
    ("Laterality", "B", None), ("AccessionNumber", "A" * 17, "A" * 16),
    ("StudyDescription", "L" * 65, "L" * 64), ("PatientSize", "1.75", "1.75"),
])
def test_values_invalid_for_their_vr_are_dropped_and_long_ones_cut(
        instance: Dataset, keyword: str, value: str, kept: str | None) -> None:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    vr = pydicom.datadict.dictionary_VR(tag)
    instance[tag] = pydicom.dataelem.RawDataElement(tag, vr, len(value), value.encode(), 0,
                                                    False, True)
    source = _read(instance)
    with warnings.catch_warnings():  # pydicom warns as it reads a value longer than its VR
        warnings.simplefilter("ignore")
        ds = clean_dataset(source).dataset
    got = ds[tag].value
    assert (str(got) if got not in (None, "") else None) == kept


def test_a_value_pydicom_cannot_read_is_dropped(instance: Dataset) -> None:
    tag = pydicom.datadict.tag_for_keyword("PatientWeight")
    instance[tag] = pydicom.dataelem.RawDataElement(tag, "DS", 4, b"70kg", 0, False, True)
    cleaned = clean_dataset(_read(instance))
    assert cleaned.dataset.PatientWeight is None
    [note] = cleaned.notes
    assert str(note).startswith("PatientWeight dropped: ")


def test_sequences_are_cleaned_item_by_item(instance: Dataset) -> None:
    item = Dataset()
    item.RequestedProcedureID = "RP\x851"
    item.ScheduledProcedureStepID = "S\\T"
    instance.RequestAttributesSequence = [item]
    ds = clean_dataset(_read(instance)).dataset
    assert ds.RequestAttributesSequence[0].RequestedProcedureID == "RP 1"
    assert ds.RequestAttributesSequence[0].ScheduledProcedureStepID == "S"


def test_lengths_are_counted_in_the_bytes_of_the_output_character_set(instance: Dataset) -> None:
    instance.SpecificCharacterSet = "ISO_IR 192"
    instance.StudyDescription = "手" * 64  # 192 bytes in UTF-8
    instance.PatientName = "A" * 10 + "=" + "山" * 30
    source = _read(instance)
    with warnings.catch_warnings():  # pydicom too counts a PN group's bytes, and warns
        warnings.simplefilter("ignore")
        ds = clean_dataset(source).dataset
    assert ds.StudyDescription == "手" * 21  # 63 bytes
    assert str(ds.PatientName) == "A" * 10 + "=" + "山" * 21
    instance.SpecificCharacterSet = "ISO_IR 100"
    instance.PatientName = "Müller^Zoë"
    instance.StudyDescription = "ä" * 64  # 64 bytes in Latin-1: kept whole
    assert clean_dataset(_read(instance)).dataset.StudyDescription == "ä" * 64


def test_text_values_keep_every_value_for_hl7(instance: Dataset) -> None:
    instance.SpecificCharacterSet = "ISO_IR 192"
    instance.PatientName = "DOE^JOHN\\SMITH^JANE"
    instance.StudyDescription = "XR\u2028HAND\\XR  WRIST"
    instance.PatientBirthDate = "19790230"
    source = _read(instance)
    assert text_values(source, "PatientName") == ("DOE^JOHN", "SMITH^JANE")
    assert text_values(source, "StudyDescription") == ("XR HAND", "XR WRIST")
    assert text_values(source, "PatientBirthDate") == ()
    assert text_values(source, "OtherPatientIDs") == ()


@pytest.mark.parametrize("declared, output", [
    (None, None), ("ISO_IR 100", "ISO_IR 100"), ("ISO_IR 192", "ISO_IR 192"),
    (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
    (["", "ISO 2022 IR 149"], "ISO_IR 192"),  # highdicom does not take it
    ("GB18030", "GB18030"),
])
def test_the_character_set_an_output_declares(declared, output) -> None:  # type: ignore[no-untyped-def]
    ds = Dataset()
    if declared is not None:
        ds.SpecificCharacterSet = declared
    assert output_character_set(ds) == output


def test_an_output_declares_utf8_only_for_text_its_source_set_cannot_hold() -> None:
    out = Dataset()
    out.PatientName = "Müller^Zoë"
    assert declare_character_set(out, "ISO_IR 100").SpecificCharacterSet == "ISO_IR 100"
    out.StudyDescription = "手"
    assert declare_character_set(out, "ISO_IR 100").SpecificCharacterSet == "ISO_IR 192"
    ascii_only = Dataset()
    ascii_only.PatientName = "DOE^JOHN"
    assert "SpecificCharacterSet" not in declare_character_set(ascii_only, "ISO_IR 100")


def test_the_minimal_dataset_keeps_the_uids_and_empties_the_rest(instance: Dataset) -> None:
    ds = minimal_dataset(_read(instance))
    assert ds.StudyInstanceUID == instance.StudyInstanceUID
    assert ds.SOPInstanceUID == instance.SOPInstanceUID and ds.Modality == "CR"
    assert ds.PatientName in ("", None) and ds.PatientID in ("", None)
    assert "StudyDescription" not in ds and "InstitutionName" not in ds
