"""DICOM Structured Report carrying radtriage's result back to the PACS.

The report is a TID 1500 "Imaging Measurement Report" built with highdicom, shaped after the IHE
AI Results (AIR) profile. It joins the *original* study (same Study Instance UID, patient and
study modules copied from the source images by highdicom) as a new SR series whose Series
Description carries the triage flag, so that a plain viewer series list already shows the result
(see :func:`series_description`).

Content tree (one study group, then one group per view)::

    Imaging Measurement Report (126000, DCM)                      TID 1500
      Language, Observer Context (device = the algorithm)         TID 1001 / 1004
      Procedure Reported = XR unspecified body region (43468-8, LN)
      Imaging Measurements (126010, DCM)
        Measurement Group (125007, DCM)  -- the study              TID 1501
          Tracking Identifier "AI triage (study)" / Tracking Unique Identifier   TID 4108
          Finding Site (363698007, SCT) = the MURA study type (FINDING_SITES)
          Algorithm Name / Version / Parameters (threshold)       TID 4019
          Probability (122157, DCM) = p, units (1, UCUM, "no units")  TID 300
          Normality (121402, DCM) = Abnormal | Normal | Normality Undetermined
          Source of Measurement (121112, DCM): IMAGE, one per source image
          Comment (121106, DCM) = notice / priority / "NOT ANALYSED: reason" / ...
        Measurement Group  -- a scored view with a peak region     TID 1410
          Tracking Identifier "AI triage (view N)", Finding Site, Algorithm
          Geometric purpose of region (130400, DCM) = Bounded by (75958009, SCT)
          Image Region (111030, DCM): SCOORD closed POLYLINE rectangle
            SELECTED FROM IMAGE: the view
          Probability = the view's, Normality = the view's against the threshold
        Measurement Group  -- a scored view without a region       TID 1501
          ... as above, with Source of Measurement = the view instead of a region
        Measurement Group  -- a view that was not scored           TID 1501
          ... no Probability, Normality Undetermined, Comment "NOT SCORED: reason"

A study that could not be analysed (``TriageReport.probability is None``) gets no Probability,
Normality "Normality Undetermined" and a Comment saying why in full (``NOT ANALYSED: no view
could be scored: body part not supported: 'SKULL'``); its Series Description has a short code
instead (:mod:`dicom_io.reasons`: ``AI TRIAGE: NOT ANALYSED - BODY PART``). Every report is PRELIMINARY and
UNVERIFIED: it is an algorithm's output that no clinician has signed.

Around the content: the algorithm is named in General Equipment (Manufacturer's Model Name =
algorithm name, Software Versions = its version), in the Device Observer (whose UID the caller
derives from the model's name and version, so it changes with the version) and in a Contributing
Equipment item (Processing Equipment, Device UID = the Device Observer UID). A rescored study's
SR names the SR it replaces in the Predecessor Documents Sequence and keeps its study group's
Tracking Unique Identifier, so that a viewer links the two.

Comprehensive 3D SR by default; Comprehensive SR (``comprehensive_3d=False``) for archives that
do not know the 3D SOP class. The content only uses 2D SCOORD, which both allow.

This module is pure logic: it takes pydicom datasets (possibly read with
``stop_before_pixels=True``) and returns a highdicom SR object; reading and writing files or
sending them is the caller's job. It never logs patient identifiers.
"""
from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io.demographics import clean_dataset, declare_character_set, notes_text
from dicom_io.reasons import NotAnalysed, not_analysed_code, not_analysed_reason

__all__ = [
    "CONTRIBUTION_DESCRIPTION",
    "DEFAULT_PROCEDURE_REPORTED",
    "FINDING_SITES",
    "PRIORITIES",
    "TriageReport",
    "ViewScore",
    "build_triage_sr",
    "not_analysed_text",
    "reason_code",
    "series_description",
]

logger = logging.getLogger(__name__)

#: Priorities the policy may decide, most urgent first.
PRIORITIES: tuple[str, ...] = ("HIGH", "ELEVATED", "ROUTINE")

#: Maximum length of a Long String (LO) value such as Series Description.
_LO_MAX = 64
#: Maximum length of a Short Text (ST) value such as Contribution Description.
_ST_MAX = 1024

# Codes (meanings as in DICOM PS3.16 / pydicom's code dictionaries).
_PROBABILITY = codes.DCM.Probability  # (122157, DCM, "Probability")
_NORMALITY = codes.DCM.Normality  # (121402, DCM, "Normality")
_ABNORMAL = codes.SCT.Abnormal  # (263654008, SCT, "Abnormal")
_NORMAL = codes.SCT.Normal  # (17621005, SCT, "Normal")
_NORMALITY_UNDETERMINED = codes.SCT.NormalityUndetermined  # (371934000, SCT)
_NO_UNITS = codes.UCUM.NoUnits  # ("1", UCUM, "no units")
_COMMENT = codes.DCM.Comment  # (121106, DCM, "Comment")
_MEASUREMENT_GROUP = ("125007", "DCM")
_TRACKING_IDENTIFIER = ("112039", "DCM")
_TRACKING_UID = ("112040", "DCM")
#: Geometric purpose of the peak region (CID 219): (75958009, SCT, "Bounded by").
_BOUNDED_BY = codes.SCT.BoundedBy
#: Purpose of Reference of our Contributing Equipment item (CID 7005):
#: (109102, DCM, "Processing Equipment").
_PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
#: Default "Procedure Reported" (CID 100): (43468-8, LN, "XR unspecified body region").
DEFAULT_PROCEDURE_REPORTED = codes.cid100.XRUnspecifiedBodyRegion

#: Finding Site (363698007, SCT) of each MURA study type. SNOMED CT codes as in pydicom's code
#: dictionary (all members of CID 4031 "Common Anatomic Regions" and CID 4042), the ones PS3.16
#: Annex L "Correspondence of Anatomic Region Codes and Body Part Examined Defined Terms" gives
#: for the Body Part Examined terms of the same names (ELBOW and WRIST are the joints).
FINDING_SITES: dict[str, Code] = {
    "ELBOW": codes.SCT.ElbowJoint,  # (16953009, SCT, "Elbow joint")
    "FINGER": codes.SCT.Finger,  # (7569003, SCT, "Finger")
    "FOREARM": codes.SCT.Forearm,  # (14975008, SCT, "Forearm")
    "HAND": codes.SCT.Hand,  # (85562004, SCT, "Hand")
    "HUMERUS": codes.SCT.Humerus,  # (85050009, SCT, "Humerus")
    "SHOULDER": codes.SCT.Shoulder,  # (16982005, SCT, "Shoulder")
    "WRIST": codes.SCT.WristJoint,  # (74670003, SCT, "Wrist joint")
}

#: Contribution Description of radtriage's Contributing Equipment item (the report's notice,
#: if any, is appended).
CONTRIBUTION_DESCRIPTION = "AI triage: abnormality classification"

#: Tracking Identifier (human readable) of the study group; a predecessor's study group is
#: recognised by it.
_STUDY_TRACKING_ID = "AI triage (study)"

Box = tuple[float, float, float, float]
#: A measurement group of the report: TID 1501, or TID 1410 for a view with its peak region.
_Group = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class ViewScore:
    """Score of one source image (view) of the study."""

    sop_instance_uid: str
    probability: float | None  # None when the view could not be scored
    error: str | None = None  # why not scored
    #: the heatmap's peak region (x0, y0, x1, y1) in the original view's pixel coordinates
    #: (column, row; the top left corner of the top left pixel is (0, 0), so a box lies within
    #: [0, Columns] x [0, Rows]); None: no region (no heatmap). Ignored when not scored; one
    #: that cannot be drawn on the view (empty, outside it) is left out with a warning.
    box: Box | None = None
    #: the view's MURA study type (a key of :data:`FINDING_SITES`); None: the report's
    study_type: str | None = None


@dataclass(frozen=True)
class TriageReport:
    """Study-level triage result, as decided by the model and the policy."""

    probability: float | None  # mean of scored views; None => "not analysed"
    abnormal: bool | None  # probability >= threshold; None when not analysed
    priority: str  # "HIGH" | "ELEVATED" | "ROUTINE" (already decided by policy)
    threshold: float
    algorithm_name: str  # from the model card, e.g. "radtriage-densenet169"
    algorithm_version: str  # e.g. "1.0.0"
    views: tuple[ViewScore, ...]
    reason: str | None = None  # for not analysed: why
    #: what the model's card says every output must carry (e.g. the demo model's
    #: "DEMO MODEL - trained on synthetic radiographs - not for clinical use"); None: nothing
    notice: str | None = None
    #: the study's MURA type (a key of :data:`FINDING_SITES`: ELBOW FINGER FOREARM HAND HUMERUS
    #: SHOULDER WRIST), coded as the Finding Site; None: no finding site
    study_type: str | None = None


# --------------------------------------------------------------------------
# validation and text helpers
# --------------------------------------------------------------------------


def _check_probability(value: float, what: str) -> float:
    """Return ``value`` as a plain float, raising if it is not in [0, 1]."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a float in [0, 1], got {value!r}") from None
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return p


def _box_numbers(box: Box, what: str) -> Box:
    """``box`` as four floats; TypeError if it is not four numbers."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be four numbers (x0, y0, x1, y1), got {box!r}") from None
    return (x0, y0, x1, y1)


def _box_problem(box: Box, columns: float | None, rows: float | None) -> str | None:
    """Why ``box`` cannot be drawn on an image of ``columns`` x ``rows``, or None."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        return "not finite"
    if not (0.0 <= x0 < x1 and 0.0 <= y0 < y1):
        return "empty or inverted, or starts left of or above the image"
    if columns and rows and (x1 > float(columns) or y1 > float(rows)):
        return f"outside the image ({columns:g} x {rows:g})"
    return None


def _study_type(value: str | None, what: str) -> str | None:
    """``value`` as a key of :data:`FINDING_SITES` (case-insensitive), ValueError if unknown."""
    if value is None:
        return None
    key = str(value).strip().upper()
    if key not in FINDING_SITES:
        raise ValueError(f"{what} must be one of {sorted(FINDING_SITES)} or None, got {value!r}")
    return key


def check_verdict(*, probability: float | None, abnormal: bool | None, threshold: float,
                  priority: str, study_type: str | None) -> None:
    """Raise ValueError if a study's verdict contradicts itself: the priority, the threshold
    and probability in [0, 1], abnormal exactly when the probability reaches the threshold (None
    when not analysed), a known study type. What the SR and the HL7 result both state."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    threshold = _check_probability(threshold, "threshold")
    if probability is None:
        if abnormal is not None:
            raise ValueError("abnormal must be None when probability is None")
    else:
        p = _check_probability(probability, "probability")
        if abnormal is None:
            raise ValueError("abnormal must be set when probability is set")
        if bool(abnormal) != (p >= threshold):
            raise ValueError(f"abnormal={abnormal} contradicts probability {p} and threshold {threshold}")
    _study_type(study_type, "study_type")


def _check_report(report: TriageReport) -> None:
    """Raise ValueError if ``report`` is internally inconsistent."""
    check_verdict(probability=report.probability, abnormal=report.abnormal,
                  threshold=report.threshold, priority=report.priority,
                  study_type=report.study_type)
    for view in report.views:
        if view.probability is not None:
            _check_probability(view.probability, "view probability")
        if view.box is not None:
            _box_numbers(view.box, "view box")
        _study_type(view.study_type, "view study_type")
    if not report.algorithm_name or not report.algorithm_version:
        raise ValueError("algorithm_name and algorithm_version are required")


def _percent(probability: float) -> int:
    """Probability in [0, 1] as an integer percentage, rounded half up.

    The shortest decimal representation of the float is used, so that
    ``0.925`` gives 93 (in floating point ``0.925 * 100`` is 92.4999...,
    and ``0.145`` is stored just below 0.145).
    """
    return int((Decimal(repr(float(probability))) * 100).to_integral_value(ROUND_HALF_UP))


def _lo_text(text: str) -> str:
    """Make free text safe for an LO value: no backslash or control chars."""
    text = text.replace("\\", "/")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


#: How a series description marks a report with a notice (the full notice is in the SR content)
_NOTICE_TAG = "DEMO MODEL"


def reason_code(report: TriageReport) -> NotAnalysed | None:
    """Why the study was not analysed, as a short code (:class:`dicom_io.reasons.NotAnalysed`)
    derived from its views' reasons; None when it was analysed."""
    if report.probability is not None:
        return None
    return not_analysed_code(v.error for v in report.views)


def not_analysed_text(report: TriageReport) -> str:
    """The full reason the study was not analysed: ``report.reason``, else the one its views'
    reasons make (:func:`dicom_io.reasons.not_analysed_reason`). What the SR, the summary image
    and the database carry; the Series Description has only the code."""
    return report.reason or not_analysed_reason(v.error for v in report.views)


def series_description(report: TriageReport) -> str:
    """Series Description that shows the triage flag in a viewer's series list.

    E.g. ``'AI TRIAGE: ABNORMAL 93% - PRIORITY HIGH'``,
    ``'AI TRIAGE: NORMAL 12% - PRIORITY ROUTINE'`` or
    ``'AI TRIAGE: NOT ANALYSED - BODY PART'``: a study not analysed says why with a code
    (:func:`reason_code`; the full reason is in the SR's content and on the summary image).
    The percentage is rounded half up (0.925 -> 93%). A report with a ``notice`` (the demo
    model's) says ``DEMO MODEL`` after the verdict:
    ``'AI TRIAGE: NORMAL 12% - PRIORITY ROUTINE - DEMO MODEL'``,
    ``'AI TRIAGE: NOT ANALYSED - DEMO MODEL - BODY PART'``. Every one fits the 64 characters
    an LO allows (the longest is 56).
    """
    if report.probability is None:
        parts = ["AI TRIAGE: NOT ANALYSED"]
        if report.notice:
            parts.append(_NOTICE_TAG)
        parts.append(str(reason_code(report)))
        text = " - ".join(parts)
    else:
        p = _check_probability(report.probability, "probability")
        if report.abnormal is None:
            raise ValueError("abnormal must be set when probability is set")
        flag = "ABNORMAL" if report.abnormal else "NORMAL"
        text = f"AI TRIAGE: {flag} {_percent(p)}% - PRIORITY {_lo_text(report.priority)}"
        if report.notice:
            text = f"{text} - {_NOTICE_TAG}"
    return text[:_LO_MAX].rstrip()


# --------------------------------------------------------------------------
# SR construction
# --------------------------------------------------------------------------

# Type 2 attributes highdicom's SR constructor reads from evidence[0] with
# plain attribute access (AttributeError when a non-conformant source lacks
# them instead of having them empty).
_REQUIRED_EVIDENCE_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def _evidence(sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Validate the sources and return them as highdicom evidence.

    All sources must belong to one study (so that all of them end up in the
    Current Requested Procedure Evidence Sequence).  Duplicates (same SOP
    Instance UID) are dropped.  Each is a cleaned copy
    (:func:`dicom_io.demographics.clean_dataset`: what highdicom copies from it is
    valid for its VR, VM and enumeration); if the first lacks a Type 2 patient or
    study attribute, that attribute is added, empty (the caller's datasets are
    never modified).
    """
    if len(sources) == 0:
        raise ValueError("at least one source image is required")
    unique: dict[str, pydicom.Dataset] = {}
    for ds in sources:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not ds.get(keyword):
                raise ValueError(f"source image without {keyword}")
        unique.setdefault(str(ds.SOPInstanceUID), ds)
    studies = {str(ds.StudyInstanceUID) for ds in unique.values()}
    if len(studies) != 1:
        raise ValueError(f"source images belong to {len(studies)} different studies")
    evidence = []
    for ds in unique.values():
        cleaned = clean_dataset(ds)
        if cleaned.notes:
            logger.debug("header values cleaned for the SR: %s", notes_text(cleaned.notes))
        evidence.append(cleaned.dataset)
    first = evidence[0]
    missing = [kw for kw in _REQUIRED_EVIDENCE_KEYWORDS if kw not in first]
    if missing:
        logger.warning("first source image lacks Type 2 attributes %s; using empty values", missing)
        for kw in missing:
            setattr(first, kw, None)  # the cleaned copy, not the caller's dataset
    return evidence


def _check_predecessor(
    predecessor: pydicom.Dataset, study_uid: str, sop_instance_uid: str
) -> None:
    """Raise ValueError unless ``predecessor`` is another SR instance of the study."""
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not predecessor.get(keyword):
            raise ValueError(f"predecessor without {keyword}")
    if predecessor.get("Modality") != "SR" or "ContentSequence" not in predecessor:
        raise ValueError("predecessor is not an SR document")
    if str(predecessor.StudyInstanceUID) != study_uid:
        raise ValueError("predecessor belongs to another study")
    if str(predecessor.SOPInstanceUID) == str(sop_instance_uid):
        raise ValueError("predecessor has the new SR's SOP Instance UID")


def _concept(item: pydicom.Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return (str(names[0].get("CodeValue", "")), str(names[0].get("CodingSchemeDesignator", "")))


def _measurement_groups(items: Sequence[pydicom.Dataset]) -> Iterator[pydicom.Dataset]:
    for item in items:
        if item.get("ValueType") == "CONTAINER" and _concept(item) == _MEASUREMENT_GROUP:
            yield item
        elif item.get("ValueType") == "CONTAINER":
            yield from _measurement_groups(item.get("ContentSequence", []))


def _study_tracking_uid_of(sr: pydicom.Dataset) -> str | None:
    """The Tracking Unique Identifier of a radtriage SR's study group, or None."""
    for group in _measurement_groups(sr.get("ContentSequence", [])):
        children = group.get("ContentSequence", [])
        ids = [i.get("TextValue") for i in children if _concept(i) == _TRACKING_IDENTIFIER]
        if _STUDY_TRACKING_ID in ids:
            for item in children:
                if _concept(item) == _TRACKING_UID and item.get("UID"):
                    return str(item.UID)
    return None


def _comment(text: str) -> hd.sr.TextContentItem:
    """A CONTAINS TEXT (121106, DCM, "Comment") content item."""
    return hd.sr.TextContentItem(
        name=_COMMENT,
        value=text,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _probability(value: float) -> hd.sr.Measurement:
    """TID 300 Probability measurement, unitless (UCUM "1")."""
    return hd.sr.Measurement(name=_PROBABILITY, value=float(value), unit=_NO_UNITS)


def _normality(value: Code) -> list[hd.sr.QualitativeEvaluation]:
    return [hd.sr.QualitativeEvaluation(name=_NORMALITY, value=value)]


def _finding_sites(study_type: str | None) -> list[hd.sr.FindingSite] | None:
    key = _study_type(study_type, "study_type")
    return None if key is None else [hd.sr.FindingSite(anatomic_location=FINDING_SITES[key])]


def _rectangle(box: Box) -> np.ndarray:
    """A box as a closed POLYLINE: 5 (column, row) points, the first repeated last."""
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def _study_group(
    report: TriageReport,
    evidence: Sequence[pydicom.Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    tracking_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 measurement group with the study-level result."""
    if report.probability is None:
        measurements = []
        normality = _NORMALITY_UNDETERMINED
        comments = [f"NOT ANALYSED: {not_analysed_text(report)}"]
    else:
        measurements = [_probability(report.probability)]
        normality = _ABNORMAL if report.abnormal else _NORMAL
        comments = [f"Triage priority: {report.priority}"]
    scored = sum(v.probability is not None for v in report.views)
    if report.views and scored < len(report.views):
        comments.append(f"{scored} of {len(report.views)} views scored")
    if report.notice:
        comments.insert(0, report.notice)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=_STUDY_TRACKING_ID
        ),
        algorithm_id=algorithm,
        finding_sites=_finding_sites(report.study_type),
        measurements=measurements,
        qualitative_evaluations=_normality(normality),
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence
        ],
    )
    # TID 1501 is extensible; highdicom has no argument for free text items.
    group[0].ContentSequence.extend(_comment(text) for text in comments)
    return group


def _view_region(box: Box, source: pydicom.Dataset, number: int) -> hd.sr.ImageRegion | None:
    """The peak region as a 2D SCOORD Image Region SELECTED FROM the view, or None (logged)
    when the box cannot be drawn on it (then the view is reported without its region)."""
    box = _box_numbers(box, "view box")
    problem = _box_problem(box, source.get("Columns"), source.get("Rows"))
    if problem is not None:
        logger.warning("view %d: peak region %r left out: %s", number, box, problem)
        return None
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_rectangle(box),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )


def _view_groups(
    report: TriageReport,
    evidence: Sequence[pydicom.Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    study_tracking_uid: str,
) -> list[_Group]:
    """One group per view: TID 1410 with its peak region, else TID 1501 (see the module doc)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    threshold = float(report.threshold)
    groups: list[_Group] = []
    seen: set[str] = set()
    for number, view in enumerate(report.views, start=1):
        sop_uid = str(view.sop_instance_uid)
        # follows the study group's UID, so it is as stable as that one (and unique when one
        # image is listed twice)
        entropy = [study_tracking_uid, "view", sop_uid] + ([str(number)] if sop_uid in seen else [])
        seen.add(sop_uid)
        source = by_uid.get(sop_uid)
        if source is None:
            logger.warning("view %d is not among the source images; not referenced", number)
        if view.probability is None:
            measurements = []
            normality = _NORMALITY_UNDETERMINED
            comments = [f"NOT SCORED: {view.error or 'no reason given'}"]
        else:
            p = float(view.probability)
            measurements = [_probability(p)]
            normality = _ABNORMAL if p >= threshold else _NORMAL
            comments = []
        common = dict(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=entropy),
                identifier=f"AI triage (view {number})",
            ),
            algorithm_id=algorithm,
            finding_sites=_finding_sites(view.study_type or report.study_type),
            measurements=measurements,
            qualitative_evaluations=_normality(normality),
        )
        group: _Group
        region = None
        if view.probability is not None and view.box is not None:
            if source is not None:
                region = _view_region(view.box, source, number)
            else:
                logger.warning("view %d: peak region left out: no source image", number)
        if region is not None:
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_region=region, geometric_purpose=_BOUNDED_BY, **common
            )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=(
                    [hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]
                    if source is not None
                    else None
                ),
                **common,
            )
        group[0].ContentSequence.extend(_comment(text) for text in comments)
        groups.append(group)
    return groups


def _contributing_equipment(
    report: TriageReport,
    *,
    manufacturer: str,
    institution_name: str | None,
    device_observer_uid: str,
    device_serial_number: str | None,
    now: datetime.datetime,
) -> hd.ContributingEquipment:
    """radtriage's Contributing Equipment item: Processing Equipment, the algorithm's identity."""
    description = CONTRIBUTION_DESCRIPTION
    if report.notice:
        description = f"{description} - {report.notice}"
    item = hd.ContributingEquipment(
        manufacturer=manufacturer[:_LO_MAX],
        purpose_of_reference=_PROCESSING_EQUIPMENT,
        manufacturer_model_name=report.algorithm_name[:_LO_MAX],
        software_versions=report.algorithm_version[:_LO_MAX],
        device_serial_number=device_serial_number,
        institution_name=institution_name,
        contribution_datetime=now,
        contribution_description=description[:_ST_MAX],
    )
    item.DeviceUID = device_observer_uid  # (0018,1002); highdicom has no argument for it
    return item


def build_triage_sr(
    report: TriageReport,
    sources: Sequence[pydicom.Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    device_observer_uid: str,
    manufacturer: str = "radtriage",
    institution_name: str | None = None,
    comprehensive_3d: bool = True,
    include_view_groups: bool = True,
    procedure_reported: hd.sr.CodedConcept | Code = DEFAULT_PROCEDURE_REPORTED,
    predecessor: pydicom.Dataset | None = None,
    contributing_equipment: bool = True,
    device_serial_number: str | None = None,
    now: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR:
    """Build the triage SR for the study of ``sources``.

    Parameters
    ----------
    report:
        The triage result.  Must be consistent (``abnormal`` equals
        ``probability >= threshold``, priority one of :data:`PRIORITIES`,
        probabilities in [0, 1], study types keys of :data:`FINDING_SITES`);
        ValueError otherwise (TypeError for a box that is not four numbers). A box that
        cannot be drawn on its view (not finite, empty, inverted, outside the image) is left
        out with a warning: the view is still reported, with its image instead of a region.
    sources:
        Datasets of the source images (pixel data not needed), all from one
        study.  All are referenced as Source of Measurement of the study
        group and listed in the Current Requested Procedure Evidence Sequence;
        patient and study information is copied from the first one.
    series_instance_uid, sop_instance_uid, series_number, instance_number:
        Identity of the new SR instance and of its (new) series.
    device_observer_uid:
        Device Observer UID identifying the algorithm/device (TID 1004), also the Device UID of
        the Contributing Equipment item; the caller derives it from the model's name and
        version, so that it changes with the version.
    manufacturer:
        Manufacturer (General Equipment, Contributing Equipment) and Device Observer
        Manufacturer.
    institution_name:
        Institution Name of the SR (and of the Contributing Equipment item), if given.
    comprehensive_3d:
        Comprehensive 3D SR (default) or, when False, Comprehensive SR for
        archives that do not know the 3D SOP class.
    include_view_groups:
        Add one measurement group per view (default): its Probability, Normality and
        peak region (or its image, or a Comment saying why it was not scored).
    procedure_reported:
        Procedure Reported (CID 100), default (43468-8, LN, "XR unspecified
        body region").
    predecessor:
        The SR of the same study this one replaces (as read from disk; pixel data is not an
        issue): named in the Predecessor Documents Sequence, and its study group's Tracking
        Unique Identifier is kept. ValueError if it is not an SR of the same study.
    contributing_equipment:
        Add radtriage's item (Processing Equipment) to the Contributing Equipment Sequence.
        highdicom always adds the source's acquisition equipment (when it has a Manufacturer)
        and itself, so the sequence is there either way.
    device_serial_number:
        Device Serial Number of the Contributing Equipment item and the Device Observer.
    now:
        Content Date/Time and Contribution DateTime (default: the local time now).

    Returns
    -------
    The SR object (a pydicom Dataset); write it with
    ``sr.save_as(path, enforce_file_format=True)``.

    The SR is PRELIMINARY and UNVERIFIED; Completion Flag is COMPLETE when the
    study was analysed and every view scored, PARTIAL otherwise.
    """
    _check_report(report)
    evidence = _evidence(sources)
    study_uid = str(evidence[0].StudyInstanceUID)
    if predecessor is not None:
        _check_predecessor(predecessor, study_uid, sop_instance_uid)
    when = now if now is not None else datetime.datetime.now()

    # Same UID for the same study and algorithm, so that successive reports on a study track the
    # same finding; a rescored study keeps its predecessor's even when the algorithm's name changed.
    study_tracking_uid = (
        _study_tracking_uid_of(predecessor) if predecessor is not None else None
    ) or generate_uid(entropy_srcs=[study_uid, report.algorithm_name, "study"])

    algorithm = hd.sr.AlgorithmIdentification(
        name=report.algorithm_name,
        version=report.algorithm_version,
        parameters=[f"threshold={float(report.threshold)!r}"],
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_observer_uid,
                name=report.algorithm_name,
                manufacturer_name=manufacturer,
                model_name=report.algorithm_name,
                serial_number=device_serial_number,
            ),
        )
    )
    groups: list[_Group] = [_study_group(report, evidence, algorithm, study_tracking_uid)]
    if include_view_groups:
        groups.extend(_view_groups(report, evidence, algorithm, study_tracking_uid))
    content = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported,
        imaging_measurements=groups,
    )
    equipment = (
        [
            _contributing_equipment(
                report,
                manufacturer=manufacturer,
                institution_name=institution_name,
                device_observer_uid=device_observer_uid,
                device_serial_number=device_serial_number,
                now=when,
            )
        ]
        if contributing_equipment
        else None
    )

    complete = report.probability is not None and all(
        v.probability is not None for v in report.views
    )
    sr_class = hd.sr.Comprehensive3DSR if comprehensive_3d else hd.sr.ComprehensiveSR
    sr = sr_class(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        institution_name=institution_name,
        is_complete=complete,
        is_final=False,  # PRELIMINARY
        is_verified=False,  # UNVERIFIED
        previous_versions=[predecessor] if predecessor is not None else None,
        contributing_equipment=equipment,
        series_description=series_description(report),
        manufacturer_model_name=report.algorithm_name[:_LO_MAX],
        software_versions=report.algorithm_version[:_LO_MAX],
        content_date=when.date(),
        content_time=when.time(),
    )
    declare_character_set(sr, evidence[0].get("SpecificCharacterSet"))
    logger.debug(
        "built triage SR %s (%s, %d source images%s)",
        sop_instance_uid,
        "analysed" if report.probability is not None else "not analysed",
        len(evidence),
        ", replaces " + str(predecessor.SOPInstanceUID) if predecessor is not None else "",
    )
    return sr
