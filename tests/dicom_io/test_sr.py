"""Tests for dicom_io.sr: the TID 1500 triage SR sent back to the PACS."""
from __future__ import annotations

import dataclasses

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io.sr import (
    TriageReport,
    ViewScore,
    build_triage_sr,
    series_description,
)

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
DEVICE_UID = "1.2.826.0.1.3680043.8.498.1"


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


def make_cr(study_uid: str, series_uid: str, number: int, view: str) -> Dataset:
    """A minimal but valid CR image (64x64 uint16 MONOCHROME2)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    # Patient
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0042"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC123"
    ds.StudyDescription = "XR CHEST"
    # General Series / CR Series
    ds.Modality = "CR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientPosition = ""
    # General Equipment
    ds.Manufacturer = "ACME"
    # General Image / CR Image
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    ds.ContentDate = "20240102"
    ds.ContentTime = "101600"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 64
    ds.Columns = 64
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * number) % 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


@pytest.fixture
def sources() -> list[Dataset]:
    study_uid = generate_uid()
    series_uid = generate_uid()
    return [
        make_cr(study_uid, series_uid, i, view)
        for i, view in enumerate(("PA", "LL", "AP"), start=1)
    ]


def make_report(sources, probs=(0.95, 0.90, 0.925), threshold=0.5, priority="HIGH"):
    views = tuple(
        ViewScore(ds.SOPInstanceUID, p, None if p is not None else "decode failed")
        for ds, p in zip(sources, probs)
    )
    scored = [p for p in probs if p is not None]
    probability = sum(scored) / len(scored)
    return TriageReport(
        probability=probability,
        abnormal=probability >= threshold,
        priority=priority,
        threshold=threshold,
        algorithm_name="radtriage-densenet169",
        algorithm_version="1.0.0",
        views=views,
    )


def not_analysed_report(sources, reason="no view could be decoded"):
    return TriageReport(
        probability=None,
        abnormal=None,
        priority="ROUTINE",
        threshold=0.5,
        algorithm_name="radtriage-densenet169",
        algorithm_version="1.0.0",
        views=tuple(ViewScore(ds.SOPInstanceUID, None, "decode failed") for ds in sources),
        reason=reason,
    )


def build(report, sources, **kwargs):
    args = dict(
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=901,
        device_observer_uid=DEVICE_UID,
    )
    args.update(kwargs)
    return build_triage_sr(report, sources, **args)


def roundtrip(sr, tmp_path: Path) -> tuple[Path, hd.sr.Comprehensive3DSR]:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path, hd.sr.srread(path)


# --------------------------------------------------------------------------
# content helpers (walk the ContentSequence of a read-back file)
# --------------------------------------------------------------------------


def walk(items):
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def concept(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator


def items_named(ds, value, scheme):
    return [i for i in walk(ds.ContentSequence) if concept(i) == (value, scheme)]


def texts(ds, value="121106", scheme="DCM"):
    return [i.TextValue for i in items_named(ds, value, scheme)]


# --------------------------------------------------------------------------
# series_description
# --------------------------------------------------------------------------


def _report(probability, abnormal, priority="ROUTINE", reason=None):
    return TriageReport(
        probability=probability,
        abnormal=abnormal,
        priority=priority,
        threshold=0.5,
        algorithm_name="a",
        algorithm_version="1",
        views=(),
        reason=reason,
    )


@pytest.mark.parametrize(
    "probability, expected",
    [
        (0.925, "93%"),  # 0.925 * 100 == 92.4999... in floating point
        (0.125, "13%"),
        (0.145, "15%"),  # stored as 0.14499999...
        (0.005, "1%"),
        (0.0049, "0%"),
        (0.0, "0%"),
        (1.0, "100%"),
        (0.995, "100%"),
        (0.12, "12%"),
    ],
)
def test_series_description_rounds_half_up(probability, expected):
    abnormal = probability >= 0.5
    text = series_description(_report(probability, abnormal))
    flag = "ABNORMAL" if abnormal else "NORMAL"
    assert text == f"AI TRIAGE: {flag} {expected} - PRIORITY ROUTINE"


def test_series_description_examples():
    assert (
        series_description(_report(0.93, True, "HIGH"))
        == "AI TRIAGE: ABNORMAL 93% - PRIORITY HIGH"
    )
    assert (
        series_description(_report(0.12, False, "ROUTINE"))
        == "AI TRIAGE: NORMAL 12% - PRIORITY ROUTINE"
    )
    assert (
        series_description(_report(None, None, reason="no view could be decoded"))
        == "AI TRIAGE: NOT ANALYSED - no view could be decoded"
    )
    assert series_description(_report(None, None)) == "AI TRIAGE: NOT ANALYSED"


def test_series_description_truncated_to_lo():
    reason = "the model server did not answer within the configured timeout " * 3
    text = series_description(_report(None, None, reason=reason))
    assert len(text) <= 64
    assert text.startswith("AI TRIAGE: NOT ANALYSED - the model server")
    assert text == text.strip()
    # backslash (LO value separator) and control characters are removed
    text = series_description(_report(None, None, reason="bad\\path\nline"))
    assert "\\" not in text and "\n" not in text
    assert text == "AI TRIAGE: NOT ANALYSED - bad/path line"


# --------------------------------------------------------------------------
# build_triage_sr
# --------------------------------------------------------------------------


def test_header_and_evidence(sources, tmp_path):
    report = make_report(sources)
    series_uid = generate_uid()
    sr = build(report, sources, series_instance_uid=series_uid, institution_name="General")
    _, back = roundtrip(sr, tmp_path)

    assert back.SOPClassUID == COMPREHENSIVE_3D_SR
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID
    assert back.PatientID == sources[0].PatientID
    assert back.PatientName == sources[0].PatientName
    assert back.AccessionNumber == sources[0].AccessionNumber
    assert back.SeriesInstanceUID == series_uid
    assert back.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert back.SeriesNumber == 901 and back.InstanceNumber == 1
    assert back.Modality == "SR"
    assert back.SeriesDescription == "AI TRIAGE: ABNORMAL 93% - PRIORITY HIGH"
    assert back.PreliminaryFlag == "PRELIMINARY"
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.CompletionFlag == "COMPLETE"
    assert back.InstitutionName == "General"
    assert back.Manufacturer == "radtriage"

    evidence = back.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1
    assert evidence[0].StudyInstanceUID == sources[0].StudyInstanceUID
    referenced = {
        (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
        for series in evidence[0].ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert referenced == {(CR_STORAGE, ds.SOPInstanceUID) for ds in sources}
    assert "PertinentOtherEvidenceSequence" not in back


def test_measurement_report_content(sources, tmp_path):
    report = make_report(sources)
    _, back = roundtrip(build(report, sources), tmp_path)

    # TID 1500 root
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert concept(back) == ("126000", "DCM")
    groups = back.content.get_image_measurement_groups()
    assert len(groups) == 1
    group = groups[0]

    # Probability, unitless UCUM "1"
    (prob,) = group.get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(report.probability, abs=1e-6)
    assert prob.unit == codes.UCUM.NoUnits
    assert prob.unit.meaning == "no units"
    (num,) = [i for i in walk(back.ContentSequence) if i.ValueType == "NUM"]
    name = num.ConceptNameCodeSequence[0]
    assert (name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning) == (
        "122157",
        "DCM",
        "Probability",
    )
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(
        report.probability, abs=1e-6
    )

    # Normality
    (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)
    assert normality.value == codes.SCT.Abnormal
    assert normality.value.meaning == "Abnormal"

    # algorithm identification (TID 4019)
    assert texts(back, "111001") == ["radtriage-densenet169"]  # Algorithm Name
    assert texts(back, "111003") == ["1.0.0"]  # Algorithm Version
    assert texts(back, "111002") == ["threshold=0.5"]  # Algorithm Parameters

    # every source image is a source of the measurement group
    assert {img.referenced_sop_instance_uid for img in group.source_images} == {
        ds.SOPInstanceUID for ds in sources
    }
    assert texts(back) == ["Triage priority: HIGH"]

    # observer: the device, identified by its UID
    (uid_item,) = items_named(back, "121012", "DCM")
    assert uid_item.UID == DEVICE_UID


def test_normal_report(sources, tmp_path):
    report = make_report(sources, probs=(0.1, 0.12, 0.14), priority="ROUTINE")
    assert report.abnormal is False
    _, back = roundtrip(build(report, sources), tmp_path)
    assert back.SeriesDescription == "AI TRIAGE: NORMAL 12% - PRIORITY ROUTINE"
    (group,) = back.content.get_image_measurement_groups()
    (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)
    assert normality.value == codes.SCT.Normal
    (prob,) = group.get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(0.12, abs=1e-6)


def test_partially_scored_study_is_partial(sources, tmp_path):
    report = make_report(sources, probs=(0.8, None, 0.6), priority="ELEVATED")
    _, back = roundtrip(build(report, sources), tmp_path)
    assert back.CompletionFlag == "PARTIAL"
    assert "2 of 3 views scored" in texts(back)
    (group,) = back.content.get_image_measurement_groups()
    assert len(group.source_images) == 3


def test_not_analysed(sources, tmp_path):
    report = not_analysed_report(sources)
    path, back = roundtrip(build(report, sources), tmp_path)

    assert back.SeriesDescription == "AI TRIAGE: NOT ANALYSED - no view could be decoded"
    assert back.CompletionFlag == "PARTIAL"
    assert back.PreliminaryFlag == "PRELIMINARY"
    assert back.VerificationFlag == "UNVERIFIED"
    assert not [i for i in walk(back.ContentSequence) if i.ValueType == "NUM"]
    (group,) = back.content.get_image_measurement_groups()
    assert group.get_measurements(name=codes.DCM.Probability) == []
    (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)
    assert normality.value == codes.SCT.NormalityUndetermined
    assert "NOT ANALYSED: no view could be decoded" in texts(back)
    assert len(back.CurrentRequestedProcedureEvidenceSequence[0]
               .ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3
    assert_dciodvfy_clean(path)


DEMO = "DEMO MODEL - trained on synthetic radiographs - not for clinical use"


def test_a_demo_models_report_says_so(sources, tmp_path):
    report = dataclasses.replace(make_report(sources), notice=DEMO)
    path, back = roundtrip(build(report, sources), tmp_path)
    assert back.SeriesDescription == "AI TRIAGE: ABNORMAL 93% - PRIORITY HIGH - DEMO MODEL"
    assert texts(back)[0] == DEMO  # the study group's first comment
    assert_dciodvfy_clean(path)
    not_analysed = dataclasses.replace(not_analysed_report(sources), notice=DEMO)
    (tmp_path / "na").mkdir()
    _, back = roundtrip(build(not_analysed, sources), tmp_path / "na")
    assert back.SeriesDescription == "AI TRIAGE: NOT ANALYSED - DEMO MODEL - no view could be decoded"
    assert DEMO in texts(back) and "NOT ANALYSED: no view could be decoded" in texts(back)
    assert "DEMO" not in series_description(make_report(sources))  # only when the card says so


def test_comprehensive_sr_option(sources, tmp_path):
    sr = build(make_report(sources), sources, comprehensive_3d=False)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    path, back = roundtrip(sr, tmp_path)
    assert back.SOPClassUID == COMPREHENSIVE_SR
    assert back.file_meta.MediaStorageSOPClassUID == COMPREHENSIVE_SR
    assert_dciodvfy_clean(path)


def test_default_is_comprehensive_3d(sources):
    sr = build(make_report(sources), sources)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR


def test_view_groups(sources, tmp_path):
    report = make_report(sources, probs=(0.2, None, 0.4), priority="ROUTINE")
    path, back = roundtrip(build(report, sources, include_view_groups=True), tmp_path)
    groups = back.content.get_image_measurement_groups()
    assert len(groups) == 4
    study, *views = groups
    assert len(study.source_images) == 3
    for ds, view, group in zip(sources, report.views, views):
        assert [i.referenced_sop_instance_uid for i in group.source_images] == [ds.SOPInstanceUID]
        probs = group.get_measurements(name=codes.DCM.Probability)
        if view.probability is None:
            assert probs == []
        else:
            assert probs[0].value == pytest.approx(view.probability, abs=1e-6)
    assert "NOT SCORED: decode failed" in texts(back)
    assert_dciodvfy_clean(path)


def test_sources_read_without_pixels(sources, tmp_path):
    headers = []
    for i, ds in enumerate(sources):
        path = tmp_path / f"cr{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        headers.append(pydicom.dcmread(path, stop_before_pixels=True))
    sr = build(make_report(sources), headers)
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID


def test_missing_type2_attributes_in_source(sources):
    for ds in sources:
        del ds.StudyID
        del ds.PatientBirthDate
    sr = build(make_report(sources), sources)
    assert sr.StudyID in (None, "")
    assert "StudyID" not in sources[0]  # caller's datasets untouched


def test_deterministic_tracking_uid(sources):
    report = make_report(sources)
    a, b = build(report, sources), build(report, sources)
    uid_a = [i.UID for i in items_named(a, "112040", "DCM")]
    uid_b = [i.UID for i in items_named(b, "112040", "DCM")]
    assert uid_a == uid_b and len(uid_a) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"priority": "URGENT"},
        {"abnormal": False},  # contradicts probability >= threshold
        {"probability": 1.5, "abnormal": True},
        {"probability": float("nan")},
        {"probability": None},  # abnormal still set
        {"algorithm_version": ""},
    ],
)
def test_inconsistent_report_rejected(sources, changes):
    report = TriageReport(**{**make_report(sources).__dict__, **changes})
    with pytest.raises(ValueError):
        build(report, sources)


def test_sources_from_two_studies_rejected(sources):
    other = make_cr(generate_uid(), generate_uid(), 9, "PA")
    with pytest.raises(ValueError, match="different studies"):
        build(make_report(sources), [*sources, other])
    with pytest.raises(ValueError):
        build(make_report(sources), [])


# --------------------------------------------------------------------------
# dciodvfy
# --------------------------------------------------------------------------


def dciodvfy(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).splitlines()


def assert_dciodvfy_clean(path: Path) -> None:
    lines = dciodvfy(path)
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)


def test_dciodvfy_no_errors(sources, tmp_path):
    path, _ = roundtrip(build(make_report(sources), sources, institution_name="General"), tmp_path)
    assert_dciodvfy_clean(path)


def test_dciodvfy_accepts_source_fixture(sources, tmp_path):
    """Sanity check of the test fixture itself: the CR images are valid."""
    path = tmp_path / "cr.dcm"
    sources[0].save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
