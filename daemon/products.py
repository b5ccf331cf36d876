"""What one scoring of a study produces: the SR, the summary image(s), a KOS, a GSPS, HL7 messages.

:func:`make_products` is pure apart from the clock it is given: it takes the study's headers
(pydicom datasets read without pixels), the triage report, every view's heatmap and thumbnail,
and the config, and returns encoded objects (:class:`Products`: with the outputs it could not
make and the header values it cleaned, by keyword); the worker writes them durably and records
them with their deliveries in one transaction. Which objects exist follows ``report:`` in the
config; which destination gets which follows each destination's ``objects``. Each is made on its
own: one that fails is left out and recorded, and the others are made.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Callable, Iterator, Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from daemon.config import Config
from dicom_io.demographics import Note, clean_dataset, minimal_dataset
from dicom_io.errors import describe
from dicom_io.geometry import ViewGeometry, normalise_heatmap
from dicom_io.sr import TriageReport, build_triage_sr, series_description

log = logging.getLogger(__name__)

#: Output kind -> the destination ``objects`` entry that selects it.
SELECTOR = {"SR": "sr", "SC": "summary", "KOS": "kos", "GSPS": "gsps",
            "ORM": "order", "OMI": "order", "ORU": "result"}


@dataclass(frozen=True)
class ViewProduct:
    """What the worker knows of one view when the products are made."""

    sop_instance_uid: str
    probability: float | None
    error: str | None
    heatmap: np.ndarray | None  # on the model's feature grid
    geometry: ViewGeometry | None
    thumbnail: np.ndarray | None  # uint8 grey, the view as displayed, small
    box: tuple[float, float, float, float] | None  # peak region, original pixel coordinates
    label: str


@dataclass(frozen=True)
class Product:
    kind: str  # SR | SC | KOS | GSPS | ORM | OMI | ORU
    uid: str  # SOP Instance UID, or HL7 message control ID
    series_instance_uid: str | None
    data: bytes
    suffix: str = ".dcm"
    #: the HL7 destination a message is for (a message names its receiver); None: any destination
    destination: str | None = None
    detail: str | None = None  # the priority an order update raises the order to


def encode(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _lateral(ds: Dataset) -> Dataset:
    """General Series Laterality is Type 2C (a paired body part): present, empty when unknown."""
    if "Laterality" not in ds and "ImageLaterality" not in ds:
        ds.Laterality = None
    return ds


def control_id() -> str:
    """An HL7 message control ID: 20 digits (MSH-10 is at most 20 characters in v2.5.1)."""
    return f"{uuid.uuid4().int % 10**20:020d}"


def _summary_views(views: Sequence[ViewProduct]):  # type: ignore[no-untyped-def]
    from dicom_io.outputs import SummaryView

    out = []
    for v in views:
        if v.thumbnail is None:
            out.append(SummaryView(display=None, heatmap=None,
                                   probability=v.probability, box=None, label=v.label,
                                   error=v.error or "not shown"))
            continue
        heat = box = None
        if v.heatmap is not None and v.geometry is not None:
            heat = v.geometry.heatmap_on_display(normalise_heatmap(v.heatmap), v.thumbnail.shape[:2])
            if v.box is not None:
                fx = v.thumbnail.shape[1] / v.geometry.columns
                fy = v.thumbnail.shape[0] / v.geometry.rows
                x0, y0, x1, y1 = v.box
                box = (int(x0 * fx), int(y0 * fy), int(np.ceil(x1 * fx)), int(np.ceil(y1 * fy)))
        out.append(SummaryView(display=v.thumbnail, heatmap=heat, probability=v.probability,
                               box=box, label=v.label, error=v.error))
    return out


@dataclass(frozen=True)
class OutputFailure:
    """An output that could not be made (the others were): which, and why, without values."""

    kind: str  # SR | SC | KOS | GSPS | ORM | OMI | ORU
    reason: str  # dicom_io.errors.describe of the error
    destination: str | None = None  # the HL7 destination a message was for
    #: the SR only: it was made all the same, from the minimal headers (UIDs, empty patient and
    #: study attributes), so the study is still reported
    fallback: bool = False

    def __str__(self) -> str:
        what = f"{self.kind} for {self.destination}" if self.destination else self.kind
        if self.fallback:
            return f"{what} made without the study's patient and study attributes: {self.reason}"
        return f"{what} not made: {self.reason}"


@dataclass
class Products:
    """What :func:`make_products` made (the SR first), what it could not, and what it cleaned."""

    products: list[Product]
    failures: list[OutputFailure]
    notes: tuple[Note, ...] = ()

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)


def make_products(config: Config, report: TriageReport, sources: Sequence[Dataset],
                  views: Sequence[ViewProduct], *, device_observer_uid: str,
                  predecessor: Dataset | None, hl7_raise_to: dict[str, str | None],
                  now: dt.datetime) -> Products:
    """Every object this result produces (the SR first), each made on its own.

    The builders clean the headers they copy (:mod:`dicom_io.demographics`; ``notes`` says
    which attributes, never values). An output whose builder still raises is left out and
    listed in ``failures`` (the error described by :func:`dicom_io.errors.describe`, with its
    value only when ``logging.phi``), so one cannot take the others with it. The SR is made in
    any case: if the cleaned headers cannot make one, it is made from the minimal headers
    (:func:`dicom_io.demographics.minimal_dataset`: the UIDs, the patient and study attributes
    empty), which the PACS still files under the study; only an SR that cannot be made even so
    raises.

    ``hl7_raise_to``: HL7 destination name -> the priority its order update raises the order to,
    or None when no order update goes there (the never-lower rule, decided by the caller).
    """
    r = config.report
    phi = config.logging.phi
    failures: list[OutputFailure] = []
    first = sources[0]
    notes = clean_dataset(first).notes  # the first source: what the outputs copy
    sr_uid, sr_series = generate_uid(), generate_uid()

    def build_sr(evidence: Sequence[Dataset]):  # type: ignore[no-untyped-def]
        return build_triage_sr(
            report, evidence, series_instance_uid=sr_series, sop_instance_uid=sr_uid,
            series_number=r.series_number, device_observer_uid=device_observer_uid,
            manufacturer=r.manufacturer, comprehensive_3d=r.sop_class == "comprehensive3d",
            include_view_groups=True, predecessor=predecessor, now=now)

    try:
        sr = build_sr(sources)
        sr_data = encode(sr)
    except Exception as exc:  # the study must still be reported: from the minimal headers
        failures.append(OutputFailure("SR", describe(exc, phi=phi), fallback=True))
        sources = [minimal_dataset(ds) for ds in sources]
        sr = build_sr(sources)
        sr_data = encode(sr)
    products = [Product("SR", sr_uid, sr_series, sr_data)]
    for kind, make in _optional_outputs(config, report, sources, views, sr, now):
        try:
            products.extend(make())
        except Exception as exc:  # one output's failure is recorded; the others go on
            failures.append(OutputFailure(kind, describe(exc, phi=phi)))
    hl7, hl7_failures = _hl7_products(config, report, first, hl7_raise_to, now)
    return Products(products + hl7, failures + hl7_failures, notes)


def _optional_outputs(config: Config, report: TriageReport, sources: Sequence[Dataset],
                      views: Sequence[ViewProduct], sr: Dataset, now: dt.datetime
                      ) -> list[tuple[str, Callable[[], list[Product]]]]:
    """(kind, a function making that kind's objects) for each output ``report:`` asks for."""
    r = config.report
    out: list[tuple[str, Callable[[], list[Product]]]] = []
    if r.summary != "off":
        out.append(("SC", lambda: _summaries(config, report, sources[0], views, now)))
    if r.key_objects and report.abnormal:
        out.append(("KOS", lambda: _key_objects(config, report, sources, views, sr, now)))
    if r.presentation_state:
        out.append(("GSPS", lambda: _presentation_states(config, report, sources, views, now)))
    return out


def _summaries(config: Config, report: TriageReport, first: Dataset,
               views: Sequence[ViewProduct], now: dt.datetime) -> list[Product]:
    from dicom_io.outputs import build_summary_sc, render_summary, render_view_overlay

    r = config.report
    shown = _summary_views(views)
    series = generate_uid()
    if r.summary == "study":
        images = [render_summary(report, shown)]
    else:
        images = [render_view_overlay(report, v) for v in shown]
    out = []
    for number, rgb in enumerate(images, start=1):
        uid = generate_uid()
        sc = build_summary_sc(
            rgb, first, series_instance_uid=series, sop_instance_uid=uid,
            series_number=r.summary_series_number, instance_number=number,
            manufacturer=r.manufacturer, algorithm_name=report.algorithm_name,
            algorithm_version=report.algorithm_version,
            series_description=series_description(report), notice=report.notice, now=now)
        out.append(Product("SC", uid, series, encode(_lateral(sc))))
    return out


def _key_objects(config: Config, report: TriageReport, sources: Sequence[Dataset],
                 views: Sequence[ViewProduct], sr: Dataset, now: dt.datetime) -> list[Product]:
    from dicom_io.outputs import build_kos, kos_description

    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    key = [by_uid[v.sop_instance_uid] for v in views
           if v.probability is not None and v.probability >= report.threshold
           and v.sop_instance_uid in by_uid]
    if not key:  # the mean is over the threshold, no single view is: the most suspicious
        scored = [v for v in views if v.probability is not None and v.sop_instance_uid in by_uid]
        key = [by_uid[max(scored, key=lambda v: v.probability).sop_instance_uid]] if scored else []
    if not key:
        return []
    uid, series = generate_uid(), generate_uid()
    kos = build_kos(list(by_uid.values()), key, sr, series_instance_uid=series,
                    sop_instance_uid=uid, series_number=config.report.key_objects_series_number,
                    manufacturer=config.report.manufacturer, description=kos_description(report),
                    now=now)
    return [Product("KOS", uid, series, encode(kos))]


def _presentation_states(config: Config, report: TriageReport, sources: Sequence[Dataset],
                         views: Sequence[ViewProduct], now: dt.datetime) -> list[Product]:
    from dicom_io.outputs import build_gsps, gsps_groups

    r = config.report
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    boxes = {v.sop_instance_uid: v.box for v in views
             if v.box is not None and v.sop_instance_uid in by_uid}
    probabilities = {v.sop_instance_uid: v.probability for v in views
                     if v.probability is not None}
    out = []
    # one presentation state per group of views that can share one (polarity, Modality LUT)
    for number, group in enumerate(gsps_groups([by_uid[u] for u in boxes]), start=1):
        uid, series = generate_uid(), generate_uid()
        gsps = build_gsps(group, boxes, series_instance_uid=series, sop_instance_uid=uid,
                          series_number=r.presentation_state_series_number,
                          instance_number=number, manufacturer=r.manufacturer,
                          algorithm_name=report.algorithm_name,
                          algorithm_version=report.algorithm_version,
                          probabilities=probabilities, notice=report.notice, now=now)
        out.append(Product("GSPS", uid, series, encode(_lateral(gsps))))
    return out


def hl7_order(ds: Dataset):  # type: ignore[no-untyped-def]
    """The order an HL7 message is about, from a study's headers, cleaned
    (:func:`dicom_io.demographics.text_values`): every patient ID and name (repetitions), the
    first of several identifiers, several descriptions joined."""
    from dicom_io.demographics import text_values
    from dicom_io.hl7 import HL7Order

    def first(source: Dataset, keyword: str) -> str | None:
        return next(iter(text_values(source, keyword)), None)

    request = ds.get("RequestAttributesSequence") or [Dataset()]
    priority = first(ds, "RequestedProcedurePriority") \
        or first(request[0], "RequestedProcedurePriority") \
        or first(request[0], "ScheduledProcedureStepPriority")
    return HL7Order(
        study_instance_uid=str(ds.StudyInstanceUID),
        accession_number=first(ds, "AccessionNumber"),
        patient_id=text_values(ds, "PatientID") or None,
        patient_name=text_values(ds, "PatientName") or None,
        issuer_of_patient_id=first(ds, "IssuerOfPatientID"),
        requested_procedure_id=first(request[0], "RequestedProcedureID"),
        study_description=" / ".join(text_values(ds, "StudyDescription")) or None,
        order_priority=priority,
    )


def _hl7_products(config: Config, report: TriageReport, first: Dataset,
                  raise_to: dict[str, str | None], now: dt.datetime
                  ) -> tuple[list[Product], list[OutputFailure]]:
    """Each HL7 destination's messages, each made on its own; and those that could not be."""
    hl7_dests = [d for d in config.destinations if d.type == "hl7"]
    if not hl7_dests:
        return [], []
    from dicom_io.hl7 import HL7Finding, Sender, build_order_update, build_result

    phi = config.logging.phi
    try:
        order = hl7_order(first)
    except Exception as exc:  # no message can be made; the DICOM outputs still go
        kinds = [("ORM" if d.message.startswith("ORM") else "OMI", d.name) for d in hl7_dests
                 if d.takes("order") and raise_to.get(d.name)]
        kinds += [("ORU", d.name) for d in hl7_dests if d.takes("result")]
        return [], [OutputFailure(k, describe(exc, phi=phi), n) for k, n in kinds]
    finding = HL7Finding(
        probability=report.probability, abnormal=report.abnormal, priority=report.priority,
        threshold=report.threshold, algorithm_name=report.algorithm_name,
        algorithm_version=report.algorithm_version, study_type=report.study_type,
        reason=report.reason, notice=report.notice)
    out: list[Product] = []
    failures: list[OutputFailure] = []
    for d in hl7_dests:
        sender = Sender(sending_application=config.dispatch.calling_ae_title,
                        receiving_application=d.receiving_application,
                        receiving_facility=d.receiving_facility)
        if d.takes("order") and raise_to.get(d.name):
            kind = "ORM" if d.message.startswith("ORM") else "OMI"
            try:
                cid = control_id()
                text = build_order_update(order, finding, control_id=cid, now=now,
                                          sender=sender, message_type=d.message)
                out.append(Product(kind, cid, None, text.encode("utf-8"), ".hl7", d.name,
                                   detail=raise_to[d.name]))
            except Exception as exc:  # the result message and the DICOM outputs still go
                failures.append(OutputFailure(kind, describe(exc, phi=phi), d.name))
        if d.takes("result"):
            try:
                cid = control_id()
                text = build_result(order, finding, control_id=cid, now=now, sender=sender)
                out.append(Product("ORU", cid, None, text.encode("utf-8"), ".hl7", d.name))
            except Exception as exc:
                failures.append(OutputFailure("ORU", describe(exc, phi=phi), d.name))
    return out, failures
