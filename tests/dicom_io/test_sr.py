"""Tests for dicom_io.sr: the TID 1500 triage SR sent back to the PACS."""
from __future__ import annotations

import dataclasses
import datetime
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io.bodypart import MURA_STUDY_TYPES
from dicom_io.sr import (
    CONTRIBUTION_DESCRIPTION,
    FINDING_SITES,
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


def study_group(sr):
    """The study's TID 1501 group (the one tracked as "AI triage (study)")."""
    (group,) = [
        g for g in sr.content.get_image_measurement_groups()
        if g.tracking_identifier == "AI triage (study)"
    ]
    return group


def study_texts(sr):
    """The Comments of the study group only."""
    return [i.TextValue for i in study_group(sr)[0].ContentSequence
            if concept(i) == ("121106", "DCM")]


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
    # not analysed: a code from the views' reasons, never the free text (in the SR content)
    skull = dataclasses.replace(_report(None, None, reason="no view could be scored: body part "
                                        "not supported: 'SKULL'"),
                                views=(ViewScore("1.2.3", None, "body part not supported: 'SKULL'"),))
    assert series_description(skull) == "AI TRIAGE: NOT ANALYSED - BODY PART"
    assert (series_description(dataclasses.replace(skull, notice="DEMO"))
            == "AI TRIAGE: NOT ANALYSED - DEMO MODEL - BODY PART")
    assert series_description(_report(None, None)) == "AI TRIAGE: NOT ANALYSED - NO IMAGES"


def test_series_description_never_quotes_the_reason():
    """The reason may be long or odd; the description has its code only, within an LO."""
    reason = "the model server did not answer within the configured timeout\\path\n" * 3
    report = dataclasses.replace(_report(None, None, reason=reason),
                                 views=(ViewScore("1.2.3", None, reason),))
    text = series_description(report)
    assert text == "AI TRIAGE: NOT ANALYSED - UNREADABLE"
    assert len(text) <= 64 and "\\" not in text and "\n" not in text


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
    assert len(groups) == 4  # the study, then one per view (no boxes: TID 1501)
    group = study_group(back)
    assert groups[0].tracking_uid == group.tracking_uid

    # Probability, unitless UCUM "1"
    (prob,) = group.get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(report.probability, abs=1e-6)
    assert prob.unit == codes.UCUM.NoUnits
    assert prob.unit.meaning == "no units"
    (num,) = [i for i in walk(group[0].ContentSequence) if i.ValueType == "NUM"]
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

    # algorithm identification (TID 4019), in every group
    assert texts(back, "111001") == ["radtriage-densenet169"] * 4  # Algorithm Name
    assert texts(back, "111003") == ["1.0.0"] * 4  # Algorithm Version
    assert texts(back, "111002") == ["threshold=0.5"] * 4  # Algorithm Parameters

    # every source image is a source of the measurement group
    assert {img.referenced_sop_instance_uid for img in group.source_images} == {
        ds.SOPInstanceUID for ds in sources
    }
    assert study_texts(back) == ["Triage priority: HIGH"]
    assert texts(back) == ["Triage priority: HIGH"]  # scored views have no comment

    # observer: the device, identified by its UID
    (uid_item,) = items_named(back, "121012", "DCM")
    assert uid_item.UID == DEVICE_UID


def test_normal_report(sources, tmp_path):
    report = make_report(sources, probs=(0.1, 0.12, 0.14), priority="ROUTINE")
    assert report.abnormal is False
    _, back = roundtrip(build(report, sources), tmp_path)
    assert back.SeriesDescription == "AI TRIAGE: NORMAL 12% - PRIORITY ROUTINE"
    group = study_group(back)
    (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)
    assert normality.value == codes.SCT.Normal
    (prob,) = group.get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(0.12, abs=1e-6)


def test_partially_scored_study_is_partial(sources, tmp_path):
    report = make_report(sources, probs=(0.8, None, 0.6), priority="ELEVATED")
    _, back = roundtrip(build(report, sources), tmp_path)
    assert back.CompletionFlag == "PARTIAL"
    assert "2 of 3 views scored" in study_texts(back)
    assert len(study_group(back).source_images) == 3


def test_not_analysed(sources, tmp_path):
    report = not_analysed_report(sources)
    path, back = roundtrip(build(report, sources), tmp_path)

    assert back.SeriesDescription == "AI TRIAGE: NOT ANALYSED - UNREADABLE"
    assert back.CompletionFlag == "PARTIAL"
    assert back.PreliminaryFlag == "PRELIMINARY"
    assert back.VerificationFlag == "UNVERIFIED"
    assert not [i for i in walk(back.ContentSequence) if i.ValueType == "NUM"]
    groups = back.content.get_image_measurement_groups()
    assert len(groups) == 4
    for group in groups:  # the study and each view
        assert group.get_measurements(name=codes.DCM.Probability) == []
        (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)
        assert normality.value == codes.SCT.NormalityUndetermined
    assert study_texts(back) == ["NOT ANALYSED: no view could be decoded", "0 of 3 views scored"]
    assert texts(back).count("NOT SCORED: decode failed") == 3
    assert len(back.CurrentRequestedProcedureEvidenceSequence[0]
               .ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3
    assert_dciodvfy_clean(path)


DEMO = "DEMO MODEL - trained on synthetic radiographs - not for clinical use"


def test_a_demo_models_report_says_so(sources, tmp_path):
    report = dataclasses.replace(make_report(sources), notice=DEMO)
    path, back = roundtrip(build(report, sources), tmp_path)
    assert back.SeriesDescription == "AI TRIAGE: ABNORMAL 93% - PRIORITY HIGH - DEMO MODEL"
    assert study_texts(back)[0] == DEMO  # the study group's first comment
    assert texts(back).count(DEMO) == 1  # once, not on every view
    assert_dciodvfy_clean(path)
    not_analysed = dataclasses.replace(not_analysed_report(sources), notice=DEMO)
    (tmp_path / "na").mkdir()
    _, back = roundtrip(build(not_analysed, sources), tmp_path / "na")
    assert back.SeriesDescription == "AI TRIAGE: NOT ANALYSED - DEMO MODEL - UNREADABLE"
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
    _, sr = roundtrip(build(full_report(sources), headers), tmp_path)  # a region, no pixels
    (roi,) = sr.content.get_planar_roi_measurement_groups()
    assert roi.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        sources[0].SOPInstanceUID)


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
    assert uid_a == uid_b and len(uid_a) == 4 == len(set(uid_a))  # study + 3 views


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


def dsrdump(path: Path) -> str:
    """DCMTK's dsrdump output; fails on a non-zero exit or an error/warning it logs."""
    exe = shutil.which("dsrdump")
    if exe is None:
        pytest.skip("dsrdump (DCMTK) not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "W:", "F:"))]
    assert proc.returncode == 0 and complaints == [], proc.stderr
    return proc.stdout


# --------------------------------------------------------------------------
# the complete SR: view groups, finding sites, predecessor, contributing equipment
# --------------------------------------------------------------------------

BOX = (10.0, 12.5, 40.0, 50.0)


def full_report(sources, *, study_type="WRIST", notice=None, version="1.0.0"):
    """View 1 abnormal with a peak region, view 2 normal without one, view 3 not scored."""
    return TriageReport(
        probability=0.5,
        abnormal=True,
        priority="ELEVATED",
        threshold=0.5,
        algorithm_name="radtriage-densenet169",
        algorithm_version=version,
        views=(
            ViewScore(sources[0].SOPInstanceUID, 0.7, box=BOX),
            ViewScore(sources[1].SOPInstanceUID, 0.3),
            ViewScore(sources[2].SOPInstanceUID, None, "decode failed", box=(0, 0, 5, 5)),
        ),
        notice=notice,
        study_type=study_type,
    )


def device_uid(name: str, version: str) -> str:
    """As the daemon derives the Device Observer UID (daemon.worker.device_uid)."""
    return generate_uid(entropy_srcs=["radtriage-device", name, version])


def closed_rectangle(box):
    x0, y0, x1, y1 = box
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def normality_of(group):
    (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)
    return normality.value


@pytest.mark.parametrize("comprehensive_3d", [True, False], ids=["3d", "comprehensive"])
def test_view_groups_content(sources, tmp_path, comprehensive_3d):
    report = full_report(sources)
    path, back = roundtrip(build(report, sources, comprehensive_3d=comprehensive_3d), tmp_path)
    expected = hd.sr.Comprehensive3DSR if comprehensive_3d else hd.sr.ComprehensiveSR
    assert isinstance(back, expected)

    # view 1: TID 1410 with its peak region as a 2D SCOORD on that view
    (roi,) = back.content.get_planar_roi_measurement_groups()
    assert roi[0].ContentTemplateSequence[0].TemplateIdentifier == "1410"
    assert roi.tracking_identifier == "AI triage (view 1)"
    assert roi.reference_type == codes.DCM.ImageRegion
    region = roi.roi
    assert isinstance(region, hd.sr.ImageRegion)
    assert region.ValueType == "SCOORD" and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    np.testing.assert_array_equal(region.value, closed_rectangle(BOX))
    (selected,) = region.ContentSequence
    assert selected.RelationshipType == "SELECTED FROM"
    ref = selected.ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == sources[0].SOPInstanceUID
    assert ref.ReferencedSOPClassUID == CR_STORAGE
    assert back.content.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=sources[0].SOPInstanceUID) != []
    assert back.content.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=sources[1].SOPInstanceUID) == []
    (prob,) = roi.get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(0.7) and prob.unit == codes.UCUM.NoUnits
    assert normality_of(roi) == codes.SCT.Abnormal  # 0.7 >= 0.5
    assert [s.value for s in roi.finding_sites] == [codes.SCT.WristJoint]
    (purpose,) = items_named(roi[0], "130400", "DCM")  # Geometric purpose of region
    assert purpose.ConceptCodeSequence[0].CodeValue == "75958009"  # Bounded by
    assert texts(roi[0], "111001") == ["radtriage-densenet169"]

    # views 2 and 3: TID 1501 groups with the view as their source image
    study, view2, view3 = back.content.get_image_measurement_groups()
    assert study.tracking_identifier == "AI triage (study)"
    assert view2.tracking_identifier == "AI triage (view 2)"
    assert view3.tracking_identifier == "AI triage (view 3)"
    for group, ds in ((view2, sources[1]), (view3, sources[2])):
        assert [i.referenced_sop_instance_uid for i in group.source_images] == [ds.SOPInstanceUID]
        assert [s.value for s in group.finding_sites] == [codes.SCT.WristJoint]
        assert texts(group[0], "111003") == ["1.0.0"]
    (prob,) = view2.get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(0.3)
    assert normality_of(view2) == codes.SCT.Normal
    assert texts(view2[0]) == []
    # not scored: no probability, undetermined, why (its box is ignored)
    assert view3.get_measurements(name=codes.DCM.Probability) == []
    assert normality_of(view3) == codes.SCT.NormalityUndetermined
    assert texts(view3[0]) == ["NOT SCORED: decode failed"]
    assert not [i for i in walk(view3[0].ContentSequence) if i.ValueType == "SCOORD"]

    # the study's own Normality is the report's, not a view's
    assert normality_of(study) == codes.SCT.Abnormal
    assert len(study.source_images) == 3
    assert back.CompletionFlag == "PARTIAL"

    # every view referenced is in the evidence; no SCOORD3D in either SOP class
    assert not [i for i in walk(back.ContentSequence) if i.ValueType == "SCOORD3D"]
    assert_dciodvfy_clean(path)
    dump = dsrdump(path)
    assert "SCOORD" in dump and "Image Region" in dump
    # highdicom reads it back from a plain pydicom dataset as well
    ds = pydicom.dcmread(path)
    again = expected.from_dataset(ds)
    assert len(again.content.get_planar_roi_measurement_groups()) == 1
    assert len(again.content.get_image_measurement_groups()) == 3


def test_view_rectangle_in_pixel_coordinates_of_that_view(sources, tmp_path):
    """A box on the second view references the second view, up to its edge (Columns x Rows)."""
    report = dataclasses.replace(
        make_report(sources, probs=(0.2, 0.9, 0.1)),
        views=(
            ViewScore(sources[0].SOPInstanceUID, 0.2),
            ViewScore(sources[1].SOPInstanceUID, 0.9, box=(0, 0, 64, 64)),
            ViewScore(sources[2].SOPInstanceUID, 0.1),
        ),
    )
    _, back = roundtrip(build(report, sources), tmp_path)
    (roi,) = back.content.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=sources[1].SOPInstanceUID)
    np.testing.assert_array_equal(roi.roi.value, closed_rectangle((0, 0, 64, 64)))
    assert normality_of(roi) == codes.SCT.Abnormal
    assert [normality_of(g) for g in back.content.get_image_measurement_groups()] == [
        codes.SCT.Normal, codes.SCT.Normal, codes.SCT.Normal  # study 0.4, views 0.2 and 0.1
    ]


def test_view_groups_can_be_left_out(sources, tmp_path):
    report = full_report(sources)
    path, back = roundtrip(build(report, sources, include_view_groups=False), tmp_path)
    assert len(back.content.get_image_measurement_groups()) == 1
    assert back.content.get_planar_roi_measurement_groups() == []
    assert_dciodvfy_clean(path)


def test_view_not_among_sources_is_not_referenced(sources, tmp_path, caplog):
    report = dataclasses.replace(
        full_report(sources),
        views=(ViewScore(generate_uid(), 0.7, box=BOX), *full_report(sources).views[1:]),
    )
    path, back = roundtrip(build(report, sources), tmp_path)
    assert back.content.get_planar_roi_measurement_groups() == []
    view1 = back.content.get_image_measurement_groups()[1]
    assert view1.tracking_identifier == "AI triage (view 1)"
    assert view1.source_images == []
    assert "not among the source images" in caplog.text
    assert_dciodvfy_clean(path)


@pytest.mark.parametrize(
    "box, why",
    [
        ((10, 10, 10, 20), "empty"),  # e.g. a peak in letterbox padding, clipped to the crop
        ((20, 10, 10, 20), "inverted"),
        ((-1, 0, 5, 5), "left of"),
        ((0, 0, float("nan"), 5), "not finite"),
        ((0, 0, float("inf"), 5), "not finite"),
        ((0, 0, 65, 10), "outside the image (64 x 64)"),
        ((0, 0, 10, 64.5), "outside the image"),
    ],
)
def test_box_that_cannot_be_drawn_is_left_out(sources, tmp_path, caplog, box, why):
    """The view is still reported (probability, normality, its image), without the region."""
    report = make_report(sources)
    views = (dataclasses.replace(report.views[0], box=box), *report.views[1:])
    path, back = roundtrip(build(dataclasses.replace(report, views=views), sources), tmp_path)
    assert back.content.get_planar_roi_measurement_groups() == []
    view1 = back.content.get_image_measurement_groups()[1]
    assert view1.tracking_identifier == "AI triage (view 1)"
    assert [i.referenced_sop_instance_uid for i in view1.source_images] == [
        sources[0].SOPInstanceUID]
    (prob,) = view1.get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(0.95)
    assert "view 1: peak region" in caplog.text and why in caplog.text
    assert_dciodvfy_clean(path)


@pytest.mark.parametrize("box", [(1, 2, 3), "abcd", (0, 0, "x", 1), 42])
def test_box_that_is_not_four_numbers_rejected(sources, box):
    report = make_report(sources)
    views = (dataclasses.replace(report.views[0], box=box), *report.views[1:])
    with pytest.raises(TypeError, match="box"):
        build(dataclasses.replace(report, views=views), sources)


def test_same_image_twice_gets_two_tracking_uids(sources):
    report = make_report(sources)
    views = (*report.views, report.views[0])
    sr = build(dataclasses.replace(report, views=views), sources)
    uids = [i.UID for i in items_named(sr, "112040", "DCM")]
    assert len(uids) == 5 == len(set(uids))


# finding sites


def test_finding_sites_cover_mura_and_are_verified_codes():
    assert set(FINDING_SITES) == set(MURA_STUDY_TYPES)
    for study_type, code in FINDING_SITES.items():
        assert code.scheme_designator == "SCT"
        # in DICOM CID 4031 "Common Anatomic Regions" and CID 4042 as shipped with pydicom
        assert code in codes.cid4031 and code in codes.cid4042, study_type
    assert FINDING_SITES["ELBOW"] == Code("16953009", "SCT", "Elbow joint")
    assert FINDING_SITES["FINGER"] == Code("7569003", "SCT", "Finger")
    assert FINDING_SITES["FOREARM"] == Code("14975008", "SCT", "Forearm")
    assert FINDING_SITES["HAND"] == Code("85562004", "SCT", "Hand")
    assert FINDING_SITES["HUMERUS"] == Code("85050009", "SCT", "Humerus")
    assert FINDING_SITES["SHOULDER"] == Code("16982005", "SCT", "Shoulder")
    assert FINDING_SITES["WRIST"] == Code("74670003", "SCT", "Wrist joint")
    cid4031 = {getattr(codes.cid4031, k).value: getattr(codes.cid4031, k).meaning
               for k in codes.cid4031.dir()}
    for code in FINDING_SITES.values():  # the meanings are those of the CID
        assert cid4031[code.value] == code.meaning


@pytest.mark.parametrize("study_type", sorted(FINDING_SITES))
def test_finding_site_from_study_type(sources, tmp_path, study_type):
    report = full_report(sources, study_type=study_type)
    _, back = roundtrip(build(report, sources), tmp_path)
    code = FINDING_SITES[study_type]
    groups = [*back.content.get_image_measurement_groups(),
              *back.content.get_planar_roi_measurement_groups()]
    assert len(groups) == 4
    for group in groups:
        assert [s.value for s in group.finding_sites] == [code]
    assert len(back.content.get_image_measurement_groups(finding_site=code)) == 3
    (site,) = {(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeMeaning)
               for i in items_named(back, "363698007", "SCT")}
    assert site == (code.value, code.meaning)


def test_view_study_type_overrides_and_none_omits(sources, tmp_path):
    report = full_report(sources, study_type=None)
    views = (dataclasses.replace(report.views[0], study_type="hand"), *report.views[1:])
    _, back = roundtrip(build(dataclasses.replace(report, views=views), sources), tmp_path)
    (roi,) = back.content.get_planar_roi_measurement_groups()
    assert [s.value for s in roi.finding_sites] == [codes.SCT.Hand]  # case-insensitive
    for group in back.content.get_image_measurement_groups():
        assert group.finding_sites == []


@pytest.mark.parametrize("where", ["study", "view"])
def test_unknown_study_type_rejected(sources, where):
    report = full_report(sources)
    if where == "study":
        report = dataclasses.replace(report, study_type="CHEST")
    else:
        views = (dataclasses.replace(report.views[0], study_type="KNEE"), *report.views[1:])
        report = dataclasses.replace(report, views=views)
    with pytest.raises(ValueError, match="study_type"):
        build(report, sources)


# predecessor


def test_rescored_study_names_the_sr_it_replaces(sources, tmp_path):
    old_path, old = roundtrip(build(full_report(sources), sources), tmp_path)
    on_disk = pydicom.dcmread(old_path, stop_before_pixels=True)
    # rescored by a newer model, under a new name even
    report = dataclasses.replace(full_report(sources, version="1.1.0"), algorithm_name="renamed")
    (tmp_path / "new").mkdir()
    new_path, new = roundtrip(
        build(report, sources, predecessor=on_disk,
              device_observer_uid=device_uid("renamed", "1.1.0")),
        tmp_path / "new",
    )
    (study,) = new.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == old.StudyInstanceUID == sources[0].StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == old.SeriesInstanceUID
    (ref,) = series.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == COMPREHENSIVE_3D_SR
    assert new.SOPInstanceUID != old.SOPInstanceUID
    # the study group and the view groups keep their tracking UIDs, so viewers link the two
    assert study_group(new).tracking_uid == study_group(old).tracking_uid
    assert [g.tracking_uid for g in new.content.get_image_measurement_groups()] == [
        g.tracking_uid for g in old.content.get_image_measurement_groups()]
    assert [g.tracking_uid for g in new.content.get_planar_roi_measurement_groups()] == [
        g.tracking_uid for g in old.content.get_planar_roi_measurement_groups()]
    assert "PredecessorDocumentsSequence" not in old
    assert_dciodvfy_clean(new_path)
    assert "Predecessor Docs    : 1" in dsrdump(new_path)


def test_predecessor_across_sop_classes(sources, tmp_path):
    old_path, old = roundtrip(build(full_report(sources), sources), tmp_path)
    sr = build(full_report(sources), sources, comprehensive_3d=False,
               predecessor=pydicom.dcmread(old_path))
    ref = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPClassUID == COMPREHENSIVE_3D_SR
    (tmp_path / "new").mkdir()
    path, _ = roundtrip(sr, tmp_path / "new")
    assert_dciodvfy_clean(path)


def test_predecessor_of_another_study_rejected(sources, tmp_path):
    others = [make_cr(generate_uid(), generate_uid(), 1, "PA")]
    other = build(make_report(others, probs=(0.9,)), others)
    with pytest.raises(ValueError, match="another study"):
        build(make_report(sources), sources, predecessor=other)
    with pytest.raises(ValueError, match="not an SR"):
        build(make_report(sources), sources, predecessor=sources[0])
    same = build(make_report(sources), sources)
    with pytest.raises(ValueError, match="SOP Instance UID"):
        build(make_report(sources), sources, predecessor=same, sop_instance_uid=same.SOPInstanceUID)


# contributing equipment


KNOWN_DCIODVFY_WARNINGS = {
    "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - "
    "this is a Standard Extended SOP Class",
}


def our_equipment(sr):
    (item,) = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "radtriage"]
    return item


def test_contributing_equipment(sources, tmp_path):
    now = datetime.datetime(2024, 1, 2, 10, 30, 15)
    uid = device_uid("radtriage-densenet169", "1.0.0")
    sr = build(full_report(sources, notice=DEMO), sources, device_observer_uid=uid,
               institution_name="General", device_serial_number="SN-7", now=now)
    path, back = roundtrip(sr, tmp_path)
    item = our_equipment(back)
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109102", "DCM", "Processing Equipment")
    assert codes.DCM.ProcessingEquipment in codes.cid7005
    assert item.ManufacturerModelName == "radtriage-densenet169"
    assert item.SoftwareVersions == "1.0.0"
    assert item.DeviceUID == uid
    assert item.DeviceSerialNumber == "SN-7"
    assert item.InstitutionName == "General"
    assert item.ContributionDateTime == "20240102103015"
    assert item.ContributionDescription == f"{CONTRIBUTION_DESCRIPTION} - {DEMO}"
    assert back.ContentDate == "20240102" and back.ContentTime.startswith("103015")
    # the same identity in General Equipment and the device observer (TID 1004)
    assert back.ManufacturerModelName == "radtriage-densenet169"
    assert back.SoftwareVersions == "1.0.0"
    (observer_uid,) = items_named(back, "121012", "DCM")
    assert observer_uid.UID == uid
    assert texts(back, "121016") == ["SN-7"]  # Device Observer Serial Number
    # highdicom's own items are kept: the source's acquisition equipment, then highdicom
    purposes = [e.PurposeOfReferenceCodeSequence[0].CodeValue
                for e in back.ContributingEquipmentSequence]
    assert purposes == ["109101", "109102", "109102"]
    assert "DEMO MODEL" in back.SeriesDescription
    assert_dciodvfy_clean(path)


def test_device_uid_changes_with_model_version(sources):
    a = build(full_report(sources, version="1.0.0"), sources,
              device_observer_uid=device_uid("radtriage-densenet169", "1.0.0"))
    b = build(full_report(sources, version="1.1.0"), sources,
              device_observer_uid=device_uid("radtriage-densenet169", "1.1.0"))
    assert our_equipment(a).DeviceUID != our_equipment(b).DeviceUID
    assert (our_equipment(a).SoftwareVersions, our_equipment(b).SoftwareVersions) == (
        "1.0.0", "1.1.0")
    assert items_named(a, "121012", "DCM")[0].UID == our_equipment(a).DeviceUID
    assert items_named(b, "121012", "DCM")[0].UID == our_equipment(b).DeviceUID
    assert texts(b, "111003") == ["1.1.0"] * 4  # Algorithm Version in every group


def test_contributing_equipment_can_be_left_out(sources):
    sr = build(full_report(sources), sources, contributing_equipment=False)
    assert [e.Manufacturer for e in sr.ContributingEquipmentSequence] == [
        "ACME", "Highdicom open-source contributors"]
    assert "DeviceSerialNumber" not in sr.ContributingEquipmentSequence[0]


@pytest.mark.parametrize("comprehensive_3d", [True, False], ids=["3d", "comprehensive"])
def test_complete_sr_is_valid_and_reads_back(sources, tmp_path, comprehensive_3d):
    """Everything at once (region, not scored view, predecessor, notice) in both SOP classes."""
    old_path, _ = roundtrip(build(full_report(sources), sources), tmp_path)
    sr = build(full_report(sources, notice=DEMO), sources, comprehensive_3d=comprehensive_3d,
               predecessor=pydicom.dcmread(old_path), institution_name="General",
               device_serial_number="SN-7")
    (tmp_path / "new").mkdir()
    path, back = roundtrip(sr, tmp_path / "new")
    assert back.SOPClassUID == (COMPREHENSIVE_3D_SR if comprehensive_3d else COMPREHENSIVE_SR)
    lines = dciodvfy(path)
    assert [line for line in lines if line.startswith("Error")] == [], "\n".join(lines)
    # The only warnings: Device UID (0018,1002) in the Contributing Equipment Sequence, Type 3
    # in the current standard (highdicom's module tables) but unknown to older dicom3tools.
    warnings = {line.strip() for line in lines if line.startswith("Warning")}
    assert warnings <= KNOWN_DCIODVFY_WARNINGS, "\n".join(lines)
    dsrdump(path)
    ds = pydicom.dcmread(path)
    assert ds.PredecessorDocumentsSequence and ds.ContributingEquipmentSequence
    cls = hd.sr.Comprehensive3DSR if comprehensive_3d else hd.sr.ComprehensiveSR
    again = cls.from_dataset(ds)
    assert len(again.content.get_planar_roi_measurement_groups()) == 1
    assert len(again.content.get_image_measurement_groups()) == 3
