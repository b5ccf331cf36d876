"""DICOM Structured Report carrying radtriage's result back to the PACS.

The report is a TID 1500 "Imaging Measurement Report" built with highdicom.
It joins the *original* study (same Study Instance UID, patient and study
modules copied from the source images by highdicom) as a new SR series whose
Series Description carries the triage flag, so that a plain viewer series
list already shows the result (see :func:`series_description`).

Content tree (study level, one TID 1501 measurement group)::

    Imaging Measurement Report (126000, DCM)                      TID 1500
      Language, Observer Context (device = the algorithm)         TID 1001
      Procedure Reported = XR unspecified body region (43468-8, LN)
      Imaging Measurements (126010, DCM)
        Measurement Group (125007, DCM)                           TID 1501
          Tracking Identifier / Tracking Unique Identifier        TID 4108
          Algorithm Name / Version / Parameters (threshold)       TID 4019
          Probability (122157, DCM) = p, units (1, UCUM, "no units")  TID 300
          Normality (121402, DCM) = Abnormal | Normal | Normality Undetermined
          Source of Measurement (121112, DCM): IMAGE, one per source image
          Comment (121106, DCM) = priority / "not analysed" reason / ...

(Optionally, ``include_view_groups=True`` adds one group per view with that
view's Probability and image, or a Comment saying why it was not scored.)

A study that could not be analysed (``TriageReport.probability is None``)
gets no Probability, Normality "Normality Undetermined" and a Comment saying
why.  Every report is PRELIMINARY and UNVERIFIED: it is an algorithm's
output that no clinician has signed.

This module is pure logic: it takes pydicom datasets (possibly read with
``stop_before_pixels=True``) and returns a highdicom SR object; reading and
writing files or sending them is the caller's job.  It never logs patient
identifiers.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

__all__ = [
    "PRIORITIES",
    "TriageReport",
    "ViewScore",
    "build_triage_sr",
    "series_description",
]

logger = logging.getLogger(__name__)

#: Priorities the policy may decide, most urgent first.
PRIORITIES: tuple[str, ...] = ("HIGH", "ELEVATED", "ROUTINE")

#: Maximum length of a Long String (LO) value such as Series Description.
_LO_MAX = 64

# Codes (meanings as in DICOM PS3.16 / pydicom's code dictionaries).
_PROBABILITY = codes.DCM.Probability  # (122157, DCM, "Probability")
_NORMALITY = codes.DCM.Normality  # (121402, DCM, "Normality")
_ABNORMAL = codes.SCT.Abnormal  # (263654008, SCT, "Abnormal")
_NORMAL = codes.SCT.Normal  # (17621005, SCT, "Normal")
_NORMALITY_UNDETERMINED = codes.SCT.NormalityUndetermined  # (371934000, SCT)
_NO_UNITS = codes.UCUM.NoUnits  # ("1", UCUM, "no units")
_COMMENT = codes.DCM.Comment  # (121106, DCM, "Comment")
#: Default "Procedure Reported" (CID 100): (43468-8, LN, "XR unspecified body region").
DEFAULT_PROCEDURE_REPORTED = codes.cid100.XRUnspecifiedBodyRegion


@dataclass(frozen=True)
class ViewScore:
    """Score of one source image (view) of the study."""

    sop_instance_uid: str
    probability: float | None  # None when the view could not be scored
    error: str | None = None  # why not scored


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


def _check_report(report: TriageReport) -> None:
    """Raise ValueError if ``report`` is internally inconsistent."""
    if report.priority not in PRIORITIES:
        raise ValueError(
            f"priority must be one of {PRIORITIES}, got {report.priority!r}"
        )
    threshold = _check_probability(report.threshold, "threshold")
    if report.probability is None:
        if report.abnormal is not None:
            raise ValueError("abnormal must be None when probability is None")
    else:
        p = _check_probability(report.probability, "probability")
        if report.abnormal is None:
            raise ValueError("abnormal must be set when probability is set")
        if bool(report.abnormal) != (p >= threshold):
            raise ValueError(
                f"abnormal={report.abnormal} contradicts probability {p} "
                f"and threshold {threshold}"
            )
    for view in report.views:
        if view.probability is not None:
            _check_probability(view.probability, "view probability")
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


def series_description(report: TriageReport) -> str:
    """Series Description that shows the triage flag in a viewer's series list.

    E.g. ``'AI TRIAGE: ABNORMAL 93% - PRIORITY HIGH'``,
    ``'AI TRIAGE: NORMAL 12% - PRIORITY ROUTINE'`` or
    ``'AI TRIAGE: NOT ANALYSED - <reason>'`` (just ``'AI TRIAGE: NOT
    ANALYSED'`` without a reason).  The percentage is rounded half up
    (0.925 -> 93%); the text is truncated to the 64 characters an LO allows. A report with a
    ``notice`` (the demo model's) says ``DEMO MODEL`` after the verdict:
    ``'AI TRIAGE: NORMAL 12% - PRIORITY ROUTINE - DEMO MODEL'``,
    ``'AI TRIAGE: NOT ANALYSED - DEMO MODEL - <reason>'``.
    """
    if report.probability is None:
        text = "AI TRIAGE: NOT ANALYSED" + (f" - {_NOTICE_TAG}" if report.notice else "")
        reason = _lo_text(report.reason or "")
        if reason:
            text = f"{text} - {reason}"
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
    Instance UID) are dropped.  If the first source lacks a Type 2 patient or
    study attribute, a shallow copy with that attribute present but empty is
    used in its place (the caller's datasets are never modified).
    """
    if len(sources) == 0:
        raise ValueError("at least one source image is required")
    unique: dict[str, pydicom.Dataset] = {}
    for ds in sources:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not ds.get(keyword):
                raise ValueError(f"source image without {keyword}")
        unique.setdefault(str(ds.SOPInstanceUID), ds)
    evidence = list(unique.values())
    studies = {str(ds.StudyInstanceUID) for ds in evidence}
    if len(studies) != 1:
        raise ValueError(f"source images belong to {len(studies)} different studies")
    first = evidence[0]
    missing = [kw for kw in _REQUIRED_EVIDENCE_KEYWORDS if kw not in first]
    if missing:
        logger.warning("first source image lacks Type 2 attributes %s; using empty values", missing)
        patched = pydicom.Dataset()
        patched.update(first)  # shallow: shares the data elements, adds to a new dataset
        for kw in missing:
            setattr(patched, kw, None)
        evidence[0] = patched
    return evidence


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


def _study_group(
    report: TriageReport,
    evidence: Sequence[pydicom.Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    study_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 measurement group with the study-level result."""
    if report.probability is None:
        measurements = []
        normality = _NORMALITY_UNDETERMINED
        reason = report.reason or "no reason given"
        comments = [f"NOT ANALYSED: {reason}"]
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
            # Same UID for the same study and algorithm, so that successive
            # reports on a study track the same finding.
            uid=generate_uid(entropy_srcs=[study_uid, report.algorithm_name, "study"]),
            identifier="AI triage (study)",
        ),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=_NORMALITY, value=normality)
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence
        ],
    )
    # TID 1501 is extensible; highdicom has no argument for free text items.
    group[0].ContentSequence.extend(_comment(text) for text in comments)
    return group


def _view_groups(
    report: TriageReport,
    evidence: Sequence[pydicom.Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    study_uid: str,
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per view: its Probability, or why it was not scored."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    groups = []
    for number, view in enumerate(report.views, start=1):
        source = by_uid.get(str(view.sop_instance_uid))
        if source is None:
            logger.warning("view %d is not among the source images; not referenced", number)
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(
                    entropy_srcs=[study_uid, report.algorithm_name, str(view.sop_instance_uid)]
                ),
                identifier=f"AI triage (view {number})",
            ),
            algorithm_id=algorithm,
            measurements=(
                [_probability(view.probability)] if view.probability is not None else []
            ),
            source_images=(
                [hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]
                if source is not None
                else None
            ),
        )
        if view.probability is None:
            group[0].ContentSequence.append(
                _comment(f"NOT SCORED: {view.error or 'no reason given'}")
            )
        groups.append(group)
    return groups


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
    include_view_groups: bool = False,
    procedure_reported: hd.sr.CodedConcept | Code = DEFAULT_PROCEDURE_REPORTED,
) -> hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR:
    """Build the triage SR for the study of ``sources``.

    Parameters
    ----------
    report:
        The triage result.  Must be consistent (``abnormal`` equals
        ``probability >= threshold``, priority one of :data:`PRIORITIES`,
        probabilities in [0, 1]); ValueError otherwise.
    sources:
        Datasets of the source images (pixel data not needed), all from one
        study.  All are referenced as Source of Measurement of the study
        group and listed in the Current Requested Procedure Evidence Sequence;
        patient and study information is copied from the first one.
    series_instance_uid, sop_instance_uid, series_number, instance_number:
        Identity of the new SR instance and of its (new) series.
    device_observer_uid:
        Device Observer UID identifying the algorithm/device (TID 1004).
    manufacturer:
        Manufacturer (General Equipment) and Device Observer Manufacturer.
    institution_name:
        Institution Name of the SR, if given.
    comprehensive_3d:
        Comprehensive 3D SR (default) or, when False, Comprehensive SR for
        archives that do not know the 3D SOP class.
    include_view_groups:
        Also add one measurement group per view with that view's Probability
        (or a Comment saying why it was not scored).
    procedure_reported:
        Procedure Reported (CID 100), default (43468-8, LN, "XR unspecified
        body region").

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
            ),
        )
    )
    groups = [_study_group(report, evidence, algorithm, study_uid)]
    if include_view_groups:
        groups.extend(_view_groups(report, evidence, algorithm, study_uid))
    content = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported,
        imaging_measurements=groups,
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
        series_description=series_description(report),
        manufacturer_model_name=report.algorithm_name[:_LO_MAX],
        software_versions=report.algorithm_version[:_LO_MAX],
    )
    logger.debug(
        "built triage SR %s (%s, %d source images)",
        sop_instance_uid,
        "analysed" if report.probability is not None else "not analysed",
        len(evidence),
    )
    return sr
