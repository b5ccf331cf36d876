"""What one scoring of a study produces: the SR, the summary image(s), a KOS, a GSPS, HL7 messages.

:func:`make_products` is pure apart from the clock it is given: it takes the study's headers
(pydicom datasets read without pixels), the triage report, every view's heatmap and thumbnail,
and the config, and returns encoded objects; the worker writes them durably and records them
with their deliveries in one transaction. Which objects exist follows ``report:`` in the config;
which destination gets which follows each destination's ``objects``.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from daemon.config import Config
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


def make_products(config: Config, report: TriageReport, sources: Sequence[Dataset],
                  views: Sequence[ViewProduct], *, device_observer_uid: str,
                  predecessor: Dataset | None, hl7_raise_to: dict[str, str | None],
                  now: dt.datetime) -> list[Product]:
    """Every object this result produces (the SR first).

    ``hl7_raise_to``: HL7 destination name -> the priority its order update raises the order to,
    or None when no order update goes there (the never-lower rule, decided by the caller).
    """
    r = config.report
    products: list[Product] = []
    sr_uid, sr_series = generate_uid(), generate_uid()
    sr = build_triage_sr(
        report, sources, series_instance_uid=sr_series, sop_instance_uid=sr_uid,
        series_number=r.series_number, device_observer_uid=device_observer_uid,
        manufacturer=r.manufacturer, comprehensive_3d=r.sop_class == "comprehensive3d",
        include_view_groups=True, predecessor=predecessor, now=now)
    products.append(Product("SR", sr_uid, sr_series, encode(sr)))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    first = sources[0]
    if r.summary != "off":
        from dicom_io.outputs import build_summary_sc, render_summary, render_view_overlay

        shown = _summary_views(views)
        series = generate_uid()
        if r.summary == "study":
            images = [render_summary(report, shown)]
        else:
            images = [render_view_overlay(report, v) for v in shown]
        for number, rgb in enumerate(images, start=1):
            uid = generate_uid()
            sc = build_summary_sc(
                rgb, first, series_instance_uid=series, sop_instance_uid=uid,
                series_number=r.summary_series_number, instance_number=number,
                manufacturer=r.manufacturer, algorithm_name=report.algorithm_name,
                algorithm_version=report.algorithm_version,
                series_description=series_description(report), notice=report.notice, now=now)
            products.append(Product("SC", uid, series, encode(_lateral(sc))))
    if r.key_objects and report.abnormal:
        from dicom_io.outputs import build_kos, kos_description

        key = [by_uid[v.sop_instance_uid] for v in views
               if v.probability is not None and v.probability >= report.threshold
               and v.sop_instance_uid in by_uid]
        if not key:  # the mean is over the threshold, no single view is: the most suspicious
            scored = [v for v in views if v.probability is not None and v.sop_instance_uid in by_uid]
            key = [by_uid[max(scored, key=lambda v: v.probability).sop_instance_uid]] if scored else []
        if key:
            uid, series = generate_uid(), generate_uid()
            kos = build_kos(list(by_uid.values()), key, sr, series_instance_uid=series,
                            sop_instance_uid=uid, series_number=r.key_objects_series_number,
                            manufacturer=r.manufacturer, description=kos_description(report),
                            now=now)
            products.append(Product("KOS", uid, series, encode(kos)))
    if r.presentation_state:
        from dicom_io.outputs import build_gsps, gsps_groups

        boxes = {v.sop_instance_uid: v.box for v in views
                 if v.box is not None and v.sop_instance_uid in by_uid}
        probabilities = {v.sop_instance_uid: v.probability for v in views
                         if v.probability is not None}
        # one presentation state per group of views that can share one (polarity, Modality LUT)
        for number, group in enumerate(gsps_groups([by_uid[u] for u in boxes]), start=1):
            uid, series = generate_uid(), generate_uid()
            gsps = build_gsps(group, boxes, series_instance_uid=series, sop_instance_uid=uid,
                              series_number=r.presentation_state_series_number,
                              instance_number=number, manufacturer=r.manufacturer,
                              algorithm_name=report.algorithm_name,
                              algorithm_version=report.algorithm_version,
                              probabilities=probabilities, notice=report.notice, now=now)
            products.append(Product("GSPS", uid, series, encode(_lateral(gsps))))
    products.extend(_hl7_products(config, report, first, hl7_raise_to, now))
    return products


def hl7_order(ds: Dataset):  # type: ignore[no-untyped-def]
    """The order an HL7 message is about, from a study's headers."""
    from dicom_io.hl7 import HL7Order

    def text(value: object) -> str | None:
        s = str(value).strip() if value not in (None, "") else ""
        return s or None

    request = ds.get("RequestAttributesSequence") or [Dataset()]
    priority = ds.get("RequestedProcedurePriority") or request[0].get("RequestedProcedurePriority") \
        or request[0].get("ScheduledProcedureStepPriority")
    return HL7Order(
        study_instance_uid=str(ds.StudyInstanceUID),
        accession_number=text(ds.get("AccessionNumber")),
        patient_id=text(ds.get("PatientID")),
        patient_name=text(ds.get("PatientName")),
        issuer_of_patient_id=text(ds.get("IssuerOfPatientID")),
        requested_procedure_id=text(request[0].get("RequestedProcedureID")),
        study_description=text(ds.get("StudyDescription")),
        order_priority=text(priority),
    )


def _hl7_products(config: Config, report: TriageReport, first: Dataset,
                  raise_to: dict[str, str | None], now: dt.datetime) -> list[Product]:
    hl7_dests = [d for d in config.destinations if d.type == "hl7"]
    if not hl7_dests:
        return []
    from dicom_io.hl7 import HL7Finding, Sender, build_order_update, build_result

    order = hl7_order(first)
    finding = HL7Finding(
        probability=report.probability, abnormal=report.abnormal, priority=report.priority,
        threshold=report.threshold, algorithm_name=report.algorithm_name,
        algorithm_version=report.algorithm_version, study_type=report.study_type,
        reason=report.reason, notice=report.notice)
    out = []
    for d in hl7_dests:
        sender = Sender(sending_application=config.dispatch.calling_ae_title,
                        receiving_application=d.receiving_application,
                        receiving_facility=d.receiving_facility)
        if d.takes("order") and raise_to.get(d.name):
            cid = control_id()
            text = build_order_update(order, finding, control_id=cid, now=now, sender=sender,
                                      message_type=d.message)
            kind = "ORM" if d.message.startswith("ORM") else "OMI"
            out.append(Product(kind, cid, None, text.encode("utf-8"), ".hl7", d.name,
                               detail=raise_to[d.name]))
        if d.takes("result"):
            cid = control_id()
            text = build_result(order, finding, control_id=cid, now=now, sender=sender)
            out.append(Product("ORU", cid, None, text.encode("utf-8"), ".hl7", d.name))
    return out
