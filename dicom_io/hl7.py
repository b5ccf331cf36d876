"""HL7 v2.5.1 messages that put radtriage's result on the RIS worklist, and an MLLP destination.

Two kinds of message, both built field by field with hl7apy (which escapes the HL7 delimiters in
every value), never by joining strings:

* an **order update** (:func:`build_order_update`): ``ORM^O01`` (IHE SWF, RAD-13 Procedure
  Update shape) or ``OMI^O23`` (IHE SWF.b) with order control ``XO`` that *raises* the order's
  priority. It is only ever built for a priority strictly more urgent than the order's own
  (see :func:`should_raise_priority`, the never-lower rule; the daemon also passes what radtriage
  already sent for the study).
* a **result** (:func:`build_result`): ``ORU^R01`` whose OBX segments carry the finding, the
  probability, the threshold, the priority and the algorithm, all preliminary (``P``): no
  clinician has signed them.

Both are matched to the RIS order by Accession Number and Study Instance UID:

=====================  =====================================  ===============================
what                   ORM^O01                                OMI^O23 / ORU^R01
=====================  =====================================  ===============================
patient ID, issuer     PID-3 (CX-1, CX-4)                     PID-3
patient name           PID-5 (XPN from the DICOM PN)          PID-5
order numbers          ORC-2 / ORC-3, OBR-2 / OBR-3           same
                       (placer / filler; both default to the
                       accession number)
accession number       OBR-18 (placer field 1, IHE SWF)       OMI: IPC-1; ORU: OBR-18
requested procedure    OBR-19 (placer field 2)                OMI: IPC-2; ORU: OBR-19
scheduled step ID      OBR-20 (filler field 1)                OMI: IPC-4
Study Instance UID     ZDS-1 (RP: uid^app^Application^DICOM)  OMI: IPC-3; ORU: OBX 110180 DCM
priority               ORC-7.6 and OBR-27.6 (TQ, HL7 0027)    OMI: TQ1-9 (CWE, HL7 0485);
                                                              ORU: OBX (ST, radtriage's term)
=====================  =====================================  ===============================

HL7 priorities (:func:`hl7_priority`): radtriage ``HIGH`` -> ``S`` (stat), ``ELEVATED`` -> ``A``
(ASAP), ``ROUTINE`` -> ``R``. The DICOM order priorities (Requested Procedure Priority, Scheduled
Procedure Step Priority) compare as the RIS/worklist mapping HL7 -> DICOM does it (S -> STAT,
A -> HIGH, R -> ROUTINE): ``STAT`` is at radtriage's ``HIGH``, ``HIGH`` at ``ELEVATED``, and
``MEDIUM``, ``ROUTINE``, ``LOW`` at ``ROUTINE``. An unknown term counts as ``STAT``: radtriage
would rather not raise a priority than risk lowering one.

ORU^R01 content (every OBX: OBX-11 ``P``, OBX-14 = ``now``)::

    MSH  ORU^R01^ORU_R01, MSH-12 2.5.1
    PID  PID-3 patient ID ^^^ issuer, PID-5 name           (only when the study has either)
    ORC  RE, ORC-2/3 order numbers
    OBR  OBR-2/3 order numbers, OBR-4 AI-TRIAGE^AI triage^99RADTRIAGE, OBR-7/22 now,
         OBR-18 accession, OBR-19 requested procedure ID, OBR-25 P
    NTE  the notice (e.g. "DEMO MODEL - ..."), when set
    OBX  CWE  121402^Normality^DCM = 263654008 Abnormal | 17621005 Normal |
              371934000 Normality Undetermined (SCT); OBX-8 A / N
    OBX  NM   122157^Probability^DCM, units 1^no units^UCUM, OBX-8 A / N   (when analysed)
    OBX  NM   THRESHOLD^Decision threshold^99RADTRIAGE, units 1
    OBX  ST   PRIORITY^AI triage priority^99RADTRIAGE = HIGH | ELEVATED | ROUTINE
    OBX  ST   111001^Algorithm Name^DCM, OBX ST 111003^Algorithm Version^DCM
    OBX  CWE  363698007^Finding Site^SCT = the MURA study type (SCT)          (when known)
    OBX  ST   110180^Study Instance UID^DCM
    OBX  TX   121106^Comment^DCM = "Not analysed: <reason>"                  (when not analysed)

The DICOM and SNOMED codes are those of the DICOM SR (:mod:`dicom_io.sr`), so the two results read
alike.

Known hl7apy 1.3.5 limits (so the messages are checked by the tests, not at run time):

* it drops Z segments inside groups when it serialises a message, so the ZDS segment of ORM^O01 is
  built by hl7apy on its own and appended after the OBR (the last segment of the message);
* its validator treats the ORM^O01 choice group (OBR | RQD | RQ1 | RXO | ODS | ODT) as a sequence
  and so never passes an ORM^O01 at ``STRICT``; every segment of it does pass;
* (HL7 itself, not hl7apy) PID-3 and PID-5 are required: a study with only one of patient ID and
  name gets a PID without the other, which ``STRICT`` validation flags, and a study with neither
  gets no PID; radtriage never invents an identifier or a name.

Text that is not ASCII is sent as UTF-8 and declared in MSH-18 (``UNICODE UTF-8``). Control
characters in any value (C0 with CR, LF and the MLLP frame bytes, DEL, C1 with NEL, U+2028 and
U+2029: :data:`dicom_io.demographics.CONTROL_CHARACTERS`) become spaces, and a value longer than
its field's HL7 datatype allows (hl7apy's lengths: ST 199, IS 20, ...) is cut to that length
(logged with the field's name, never the value), so that no header value can cost the study its
message.

Several patient IDs or names (a DICOM value with more than one value) become repetitions of
PID-3 or PID-5 (the issuer goes with the first ID); a person name's ideographic and phonetic
groups become repetitions of their own, marked I and P in XPN-8 (table 4000; the alphabetic one
is A when there are several).

Nothing here logs a patient's name or ID.
"""
from __future__ import annotations

import datetime
import functools
import logging
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Component, Field, Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy import load_library
from hl7apy.base_datatypes import TextualDataType
from hl7apy.factories import datatype_factory
from hl7apy.parser import get_message_info, parse_segments
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_io.demographics import CONTROL_CHARACTERS
from dicom_io.errors import OutputError, SendError
#: the worklist priorities (most urgent first) and finding-site codes are the SR's, so the
#: RIS and the PACS are told the same
from dicom_io.sr import FINDING_SITES, PRIORITIES, check_verdict

if TYPE_CHECKING:
    from dicom_io.destinations import Origin

__all__ = [
    "Ack",
    "FINDING_SITES",
    "HL7Finding",
    "HL7Order",
    "MLLPDestination",
    "PRIORITIES",
    "Sender",
    "build_order_update",
    "build_result",
    "hl7_priority",
    "parse_ack",
    "should_raise_priority",
]

log = logging.getLogger(__name__)

VERSION = "2.5.1"
_LEVEL = VALIDATION_LEVEL.STRICT

_RANK = {"ROUTINE": 0, "ELEVATED": 1, "HIGH": 2}
#: HL7 table 0027 / 0485 codes and their display names
_HL7_PRIORITY = {"HIGH": ("S", "Stat"), "ELEVATED": ("A", "ASAP"), "ROUTINE": ("R", "Routine")}
#: DICOM Requested Procedure / Scheduled Procedure Step Priority -> rank of the radtriage priority
#: it equals (see the module docstring)
_DICOM_RANK = {"STAT": 2, "HIGH": 1, "MEDIUM": 0, "ROUTINE": 0, "LOW": 0}

_LOCAL = "99RADTRIAGE"  # HL7 local coding system for what no standard code names
_BATTERY = ("AI-TRIAGE", "AI triage", _LOCAL)
_THRESHOLD = ("THRESHOLD", "Decision threshold", _LOCAL)
_PRIORITY = ("PRIORITY", "AI triage priority", _LOCAL)
_NO_UNITS = (codes.UCUM.NoUnits.value, codes.UCUM.NoUnits.meaning, "UCUM")

_CONTROL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}")  # MSH-10 is ST(20)

MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
_MAX_ACK_BYTES = 1 << 20
_MAX_ERROR_TEXT = 500  # of the RIS's error text in a SendError


# --------------------------------------------------------------------------------------- model

@dataclass(frozen=True)
class HL7Order:
    """What the message is about, taken from the study's DICOM headers."""

    study_instance_uid: str
    accession_number: str | None
    #: one patient ID, or several (PID-3 repetitions; the issuer is the first one's)
    patient_id: str | Sequence[str] | None
    #: DICOM PN "Family^Given^Middle^Prefix^Suffix", or several (PID-5 repetitions); each of a
    #: name's component groups (alphabetic = ideographic = phonetic) is a repetition of its own
    patient_name: str | Sequence[str] | None
    issuer_of_patient_id: str | None = None
    requested_procedure_id: str | None = None
    study_description: str | None = None
    #: the order's current priority as DICOM gave it (Requested Procedure Priority or Scheduled
    #: Procedure Step Priority: STAT, HIGH, ROUTINE, MEDIUM, LOW), or None
    order_priority: str | None = None
    #: Scheduled Procedure Step ID: IPC-4 of OMI^O23 (required there), OBR-20 of ORM^O01
    scheduled_procedure_step_id: str | None = None
    #: DICOM Modality (e.g. "DX", "CR"): IPC-5 of OMI^O23
    modality: str | None = None
    #: ORC-2 / OBR-2 and ORC-3 / OBR-3 when the study carries them (Placer / Filler Order Number
    #: Imaging Service Request); None: the accession number
    placer_order_number: str | None = None
    filler_order_number: str | None = None


@dataclass(frozen=True)
class HL7Finding:
    """radtriage's result for the study."""

    probability: float | None  #: None: not analysed
    abnormal: bool | None  #: probability >= threshold; None when not analysed
    priority: str  #: "HIGH" | "ELEVATED" | "ROUTINE"
    threshold: float
    algorithm_name: str
    algorithm_version: str
    study_type: str | None = None  #: MURA type: ELBOW FINGER FOREARM HAND HUMERUS SHOULDER WRIST
    reason: str | None = None  #: why not analysed
    notice: str | None = None  #: e.g. "DEMO MODEL - ... - not for clinical use": an NTE of the ORU


@dataclass(frozen=True)
class Sender:
    """MSH-3/4 (sending application and facility) and MSH-5/6 (receiving); 20 characters each."""

    sending_application: str = "RADTRIAGE"
    sending_facility: str = "RADTRIAGE"
    receiving_application: str = "RIS"
    receiving_facility: str = "RIS"


@dataclass(frozen=True)
class Ack:
    """What an HL7 acknowledgement said."""

    code: str  #: MSA-1: AA CA (accepted), AE CE (error), AR CR (rejected)
    control_id: str  #: MSA-2: the MSH-10 of the message it acknowledges
    text: str | None  #: MSA-3 and the ERR segments' texts, or None

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


# ------------------------------------------------------------------------------ priority policy

def hl7_priority(priority: str) -> str:
    """radtriage's priority as an HL7 (table 0027 / 0485) priority: HIGH S, ELEVATED A, ROUTINE R."""
    return _HL7_PRIORITY[_check_priority(priority, "priority")][0]


def should_raise_priority(new: str, order_priority: str | None, already_sent: str | None) -> bool:
    """The never-lower rule: whether an order update for ``new`` may be sent.

    True only when ``new`` (a radtriage priority) is strictly more urgent than both the order's own
    priority (a DICOM term, compared as the module docstring says; None or empty: routine) and
    ``already_sent`` (the most urgent priority radtriage already sent for this study, or None).
    ``ROUTINE`` therefore never sends. Raises ValueError for a radtriage priority it does not know.
    """
    rank = _RANK[_check_priority(new, "new")]
    sent = _RANK[_check_priority(already_sent, "already_sent")] if already_sent is not None else 0
    return rank > max(_order_rank(order_priority), sent, _RANK["ROUTINE"])


def _order_rank(order_priority: str | None) -> int:
    term = (order_priority or "").strip().upper()
    if not term:
        return _RANK["ROUTINE"]
    return _DICOM_RANK.get(term, _RANK["HIGH"])  # unknown: never risk lowering it


def _check_priority(value: str | None, what: str) -> str:
    if value is None or value not in _RANK:
        raise ValueError(f"{what} must be one of {PRIORITIES}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------- building

def build_order_update(order: HL7Order, finding: HL7Finding, *, control_id: str,
                       now: datetime.datetime, sender: Sender = Sender(),
                       message_type: Literal["ORM^O01", "OMI^O23"] = "ORM^O01") -> str:
    """An ``XO`` (change order) message raising the order's priority to ``finding.priority``.

    Returns ER7 text, every segment ended by a carriage return. Raises
    :class:`~dicom_io.errors.OutputError` (a ValueError) when the update would not raise the
    order's own priority (:func:`should_raise_priority` with nothing sent yet: the caller checks
    what it already sent), when there is no accession number to match the order by, or, for
    OMI^O23, when the requested procedure ID or scheduled procedure step ID that IPC requires is
    missing.
    """
    _check_finding(finding)
    if not should_raise_priority(finding.priority, order.order_priority, None):
        raise OutputError(f"priority {finding.priority} would not raise the order's own "
                          "priority (Requested Procedure Priority): no order update")
    if not (order.accession_number or "").strip():
        raise OutputError("no accession number: an order update cannot be matched to the order")
    if message_type not in ("ORM^O01", "OMI^O23"):
        raise ValueError(f"message_type must be ORM^O01 or OMI^O23, got {message_type!r}")
    if message_type == "OMI^O23":
        _check_ipc(order)
    code, text = _HL7_PRIORITY[finding.priority]
    structure = message_type.replace("^", "_")
    try:
        msg = _message(structure, control_id, now, sender)
        _patient_group(msg, structure, order)
        grp = msg.add_group(f"{structure}_ORDER")
        _orc(grp.orc, "XO", order, now)
        if structure == "ORM_O01":
            _put(grp.orc.orc_7.tq_6, code)  # ORC-7.6 priority (TQ, retained in 2.5.1 for ORM)
            detail = grp.add_group("ORM_O01_ORDER_DETAIL")
            obr = detail.add_group("ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP").obr
            _obr(obr, order, procedure=_procedure(order))
            _put(obr.obr_27.tq_6, code)  # OBR-27.6 priority
            if order.scheduled_procedure_step_id:
                _put(obr.obr_20, order.scheduled_procedure_step_id)
            return _er7(msg, extra=[_zds(order, sender)])
        tq1 = grp.add_group("OMI_O23_TIMING").tq1
        _put(tq1.tq1_1, "1")
        _code(tq1.tq1_9, code, text, "HL70485")  # TQ1-9 priority
        obr = grp.obr
        _obr(obr, order, procedure=_procedure(order), placer_fields=False)
        ipc = grp.add_segment("IPC")
        _put(ipc.ipc_1.ei_1, order.accession_number or "")
        _put(ipc.ipc_2.ei_1, order.requested_procedure_id or "")
        _put(ipc.ipc_3.ei_1, order.study_instance_uid)
        _put(ipc.ipc_4.ei_1, order.scheduled_procedure_step_id or "")
        if order.modality:
            _code(ipc.ipc_5, order.modality, None, "DCM")
        return _er7(msg)
    except HL7apyException as exc:  # its messages may quote a value: no patient data in ours
        raise OutputError(f"hl7apy refused a value of the {message_type} ({type(exc).__name__})") from None


def build_result(order: HL7Order, finding: HL7Finding, *, control_id: str,
                 now: datetime.datetime, sender: Sender = Sender()) -> str:
    """``ORU^R01`` carrying the finding (see the module docstring for the segments).

    Returns ER7 text, every segment ended by a carriage return. A result without an accession
    number is still built (OBR-2/3 empty, the Study Instance UID in its OBX).
    """
    _check_finding(finding)
    try:
        msg = _message("ORU_R01", control_id, now, sender)
        result = msg.add_group("ORU_R01_PATIENT_RESULT")
        _patient_group(result, "ORU_R01", order)
        grp = result.add_group("ORU_R01_ORDER_OBSERVATION")
        _orc(grp.orc, "RE", order, now)
        obr = grp.obr
        _obr(obr, order, procedure=_BATTERY)
        _put(obr.obr_7.ts_1, _dtm(now))
        _put(obr.obr_22.ts_1, _dtm(now))
        _put(obr.obr_25, "P")
        if finding.notice:
            nte = grp.add_segment("NTE")
            _put(nte.nte_1, "1")
            _put(nte.nte_2, "L")  # HL7 0105: ancillary (filler) department
            _put(nte.nte_3, finding.notice)
        for i, (value_type, ident, value, units, flag) in enumerate(_observations(order, finding), 1):
            obx = grp.add_group("ORU_R01_OBSERVATION").obx
            _put(obx.obx_1, str(i))
            _put(obx.obx_2, value_type)
            _code(obx.obx_3, *ident)
            obx.add(_observation_value(value))
            if units:
                _code(obx.obx_6, *units)
            if flag:
                _put(obx.obx_8, flag)
            _put(obx.obx_11, "P")
            _put(obx.obx_14.ts_1, _dtm(now))
        return _er7(msg)
    except HL7apyException as exc:
        raise OutputError(f"hl7apy refused a value of the ORU^R01 ({type(exc).__name__})") from None


#: (OBX-2 value type, OBX-3 code, OBX-5 components, OBX-6 units, OBX-8 abnormal flag)
_Observation = tuple[str, tuple[str, str, str], tuple[str, ...], tuple[str, str, str] | None, str | None]


def _observations(order: HL7Order, f: HL7Finding) -> Iterator[_Observation]:
    """The OBX segments of the result, in order."""
    flag = None if f.abnormal is None else ("A" if f.abnormal else "N")
    if f.abnormal is None:
        normality = codes.SCT.NormalityUndetermined
    else:
        normality = codes.SCT.Abnormal if f.abnormal else codes.SCT.Normal
    yield "CWE", _triple(codes.DCM.Normality), _triple(normality), None, flag
    if f.probability is not None:
        yield "NM", _triple(codes.DCM.Probability), (_number(f.probability),), _NO_UNITS, flag
    yield "NM", _THRESHOLD, (_number(f.threshold),), _NO_UNITS, None
    yield "ST", _PRIORITY, (f.priority,), None, None
    yield "ST", _triple(codes.DCM.AlgorithmName), (f.algorithm_name,), None, None
    yield "ST", _triple(codes.DCM.AlgorithmVersion), (f.algorithm_version,), None, None
    if f.study_type:
        site = FINDING_SITES[f.study_type.strip().upper()]
        yield "CWE", _triple(codes.SCT.FindingSite), _triple(site), None, None
    yield "ST", _triple(codes.DCM.StudyInstanceUID), (order.study_instance_uid,), None, None
    if f.probability is None:
        why = f"Not analysed: {f.reason}" if f.reason else "Not analysed"
        yield "TX", _triple(codes.DCM.Comment), (why,), None, None


def _message(structure: str, control_id: str, now: datetime.datetime, sender: Sender) -> Message:
    if not isinstance(control_id, str) or not _CONTROL_ID.fullmatch(control_id):
        raise ValueError(f"control_id must be 1-20 letters, digits, '.', '_' or '-', got {control_id!r}")
    msg = Message(structure, version=VERSION, validation_level=_LEVEL)
    msh = msg.msh
    _put(msh.msh_3.hd_1, sender.sending_application)
    _put(msh.msh_4.hd_1, sender.sending_facility)
    _put(msh.msh_5.hd_1, sender.receiving_application)
    _put(msh.msh_6.hd_1, sender.receiving_facility)
    _put(msh.msh_7.ts_1, _dtm(now))
    code, event = structure.split("_")
    _put(msh.msh_9.msg_1, code)
    _put(msh.msh_9.msg_2, event)
    _put(msh.msh_9.msg_3, structure)
    _put(msh.msh_10, control_id)
    _put(msh.msh_11.pt_1, "P")  # production
    _put(msh.msh_12.vid_1, VERSION)
    return msg


def _repetitions(value: str | Sequence[str] | None) -> list[str]:
    """The non-empty values of a field that may repeat, cleaned of control characters."""
    values = [value] if isinstance(value, str) else list(value or [])
    return [v for v in (_clean(v) for v in values) if v]


def _patient_group(parent: Any, structure: str, order: HL7Order) -> Any:
    """PID with PID-3 and PID-5 when the study has a patient ID or name; None otherwise."""
    ids, names = _repetitions(order.patient_id), _name_groups(order.patient_name)
    if not (ids or names):
        return None
    pid = parent.add_group(f"{structure}_PATIENT").pid
    _put(pid.pid_1, "1")
    for n, patient_id in enumerate(ids):
        cx = pid.pid_3 if n == 0 else pid.add_field("PID_3")
        _put(cx.cx_1, patient_id)
        if n == 0 and order.issuer_of_patient_id:
            _put(cx.cx_4.hd_1, order.issuer_of_patient_id)
    for n, (name, representation) in enumerate(names):
        _person_name(pid.pid_5 if n == 0 else pid.add_field("PID_5"), name, representation)
    return pid


def _name_groups(value: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """(one PN component group, its XPN-8 name representation code or None), for every group
    of every name: A alphabetic, I ideographic, P phonetic (HL7 table 4000), given only when a
    name has more than one group with a name in it."""
    out: list[tuple[str, str | None]] = []
    for pn in _repetitions(value):
        groups = [(code, group) for code, group in zip("AIP", pn.split("=")[:3])
                  if group.strip("^ ")]
        out += [(group, code if len(groups) > 1 else None) for code, group in groups]
    return out


def _person_name(xpn: Any, group: str, representation: str | None = None) -> None:
    """One DICOM PN component group (family^given^middle^prefix^suffix) into an XPN."""
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    if family:
        _put(xpn.xpn_1.fn_1, family)
    if given:
        _put(xpn.xpn_2, given)
    if middle:
        _put(xpn.xpn_3, middle)
    if suffix:
        _put(xpn.xpn_4, suffix)
    if prefix:
        _put(xpn.xpn_5, prefix)
    if representation:
        _put(xpn.xpn_8, representation)


def _orc(orc: Any, control: str, order: HL7Order, now: datetime.datetime) -> None:
    _put(orc.orc_1, control)
    placer, filler = _order_numbers(order)
    if placer:
        _put(orc.orc_2.ei_1, placer)
    if filler:
        _put(orc.orc_3.ei_1, filler)
    _put(orc.orc_9.ts_1, _dtm(now))


def _obr(obr: Any, order: HL7Order, *, procedure: tuple[str | None, str | None, str | None],
         placer_fields: bool = True) -> None:
    _put(obr.obr_1, "1")
    placer, filler = _order_numbers(order)
    if placer:
        _put(obr.obr_2.ei_1, placer)
    if filler:
        _put(obr.obr_3.ei_1, filler)
    _code(obr.obr_4, *procedure)
    if placer_fields:  # IHE SWF (ORM, and the same for ORU); OMI^O23 has IPC for these
        if order.accession_number:
            _put(obr.obr_18, order.accession_number)
        if order.requested_procedure_id:
            _put(obr.obr_19, order.requested_procedure_id)


def _order_numbers(order: HL7Order) -> tuple[str | None, str | None]:
    return (order.placer_order_number or order.accession_number,
            order.filler_order_number or order.accession_number)


def _procedure(order: HL7Order) -> tuple[None, str, None]:
    """OBR-4 of an order update: the ordered procedure as text (radtriage has no code for it)."""
    return None, (order.study_description or "").strip() or "Radiograph", None


def _zds(order: HL7Order, sender: Sender) -> Segment:
    """IHE SWF ZDS: ZDS-1 Study Instance UID as RP: uid ^ application ^ Application ^ DICOM."""
    zds = Segment("ZDS", version=VERSION, validation_level=_LEVEL)
    rp = Field("ZDS_1", datatype="RP", version=VERSION, validation_level=_LEVEL)
    _put(rp.rp_1, order.study_instance_uid)
    _put(rp.rp_2.hd_1, sender.sending_application)
    _put(rp.rp_3, "Application")
    _put(rp.rp_4, "DICOM")
    zds.add(rp)
    return zds


def _check_ipc(order: HL7Order) -> None:
    missing = [name for name, value in (("requested_procedure_id", order.requested_procedure_id),
                                        ("scheduled_procedure_step_id", order.scheduled_procedure_step_id))
               if not (value or "").strip()]
    if missing:
        raise OutputError(f"OMI^O23 needs {' and '.join(missing)} (IPC-2, IPC-4); use ORM^O01")


def _check_finding(f: HL7Finding) -> None:
    check_verdict(probability=f.probability, abnormal=f.abnormal, threshold=f.threshold,
                  priority=f.priority, study_type=f.study_type)
    if not (f.algorithm_name or "").strip() or not (f.algorithm_version or "").strip():
        raise ValueError("algorithm_name and algorithm_version are required")


# ------------------------------------------------------------------------------ hl7apy helpers

def _clean(text: str) -> str:
    """Control characters (CR and LF end a segment, VT and FS frame MLLP, NEL and U+2028 end a
    line for some readers) become spaces."""
    return CONTROL_CHARACTERS.sub(" ", str(text)).strip()


@functools.lru_cache(maxsize=None)
def max_length(datatype: str) -> int | None:
    """The longest value hl7apy (v2.5.1) accepts in an element of base ``datatype`` (ST 199,
    IS 20, TX 65536, ...); None: no limit of its own (ID, a table's codes)."""
    base = load_library(VERSION).get_base_datatypes().get(datatype)
    if not (isinstance(base, type) and issubclass(base, TextualDataType)):
        return None  # a date or number: radtriage writes those itself
    return base("").max_length


def _put(element: Any, text: str) -> None:
    """Set a base-type field, component or subcomponent to literal ``text``, cleaned of control
    characters and cut to the element's length (:func:`max_length`).

    hl7apy parses a plain string assigned to an element as ER7; a datatype object instead is
    kept as is and escaped (| ^ ~ \\ &) when the message is serialised.
    """
    value = _clean(text)
    limit = max_length(element.datatype)
    cut = limit is not None and len(value) > limit
    if cut:
        value = value[:limit].rstrip()
    element.value = datatype_factory(element.datatype, value, version=VERSION,
                                     validation_level=_LEVEL)
    if cut:
        log.info("HL7 %s cut to the %d characters of its %s", _where(element), limit,
                 element.datatype)


def _where(element: Any) -> str:
    """An element's place, e.g. ``PID.PID_3.CX_4.HD_1`` (for a log line: never its value)."""
    names = []
    while element is not None and getattr(element, "name", None) and len(names) < 6:
        names.append(str(element.name))
        if len(element.name) == 3:  # the segment
            break
        element = getattr(element, "parent", None)
    return ".".join(reversed(names))


def _code(field: Any, code: str | None, meaning: str | None, scheme: str | None) -> None:
    """A CE / CWE: identifier ^ text ^ name of coding system."""
    prefix = field.datatype.lower()
    for i, value in enumerate((code, meaning, scheme), 1):
        if value:
            _put(getattr(field, f"{prefix}_{i}"), value)


def _observation_value(values: Sequence[str]) -> Field:
    """OBX-5 (datatype "varies"): hl7apy takes its components as VARIES_n of type ST."""
    field = Field("OBX_5", version=VERSION, validation_level=_LEVEL)
    for i, value in enumerate(values, 1):
        comp = Component(f"VARIES_{i}", datatype="ST", version=VERSION, validation_level=_LEVEL)
        if value:
            comp.value = datatype_factory("ST", _clean(value)[:max_length("ST")].rstrip(),
                                          version=VERSION, validation_level=_LEVEL)
        field.add(comp)
    return field


def _triple(code: Code) -> tuple[str, str, str]:
    return code.value, code.meaning, code.scheme_designator


def _number(value: float) -> str:
    """At most four decimals, rounded half up, no trailing zeros (0.87, 0.5, 1)."""
    d = Decimal(repr(float(value))).quantize(Decimal("0.0001"), ROUND_HALF_UP).normalize()
    return format(d, "f")


def _dtm(now: datetime.datetime) -> str:
    """HL7 DTM to the second, with the UTC offset when ``now`` has a time zone."""
    return now.strftime("%Y%m%d%H%M%S%z" if now.utcoffset() is not None else "%Y%m%d%H%M%S")


def _er7(msg: Message, extra: Sequence[Segment] = ()) -> str:
    """The message's ER7, ``extra`` segments appended, every segment ended by CR.

    MSH-18 says ``UNICODE UTF-8`` when the text is not plain ASCII (it is sent as UTF-8).
    """
    def text() -> str:
        return "".join(s + "\r" for s in [msg.to_er7(), *(seg.to_er7() for seg in extra)])

    er7 = text()
    if not er7.isascii():
        _put(msg.msh.msh_18, "UNICODE UTF-8")
        er7 = text()
    return er7


# ------------------------------------------------------------------------------------- ACKs

def parse_ack(text: str) -> Ack:
    """Read an HL7 ACK (any 2.x version: its MSA and ERR are read with the 2.5.1 definitions,
    which keep the older fields' places). Raises ValueError when it has no MSA."""
    text = text.strip("\r\n\x0b\x1c ")
    if not text.startswith("MSH"):
        raise ValueError("not an HL7 message (no MSH)")
    try:
        encoding_chars, _, _ = get_message_info(text)
        segments = parse_segments(re.sub(r"\r\n|\n|\r", "\r", text), version=VERSION,
                                  encoding_chars=encoding_chars,
                                  validation_level=VALIDATION_LEVEL.TOLERANT)
    except HL7apyException as exc:
        raise ValueError(f"unreadable ACK: {exc}") from exc
    msa = next((s for s in segments if s.name == "MSA"), None)
    if msa is None:
        raise ValueError("the answer has no MSA segment")

    def read(element: Any) -> str:
        return _unescape(element.to_er7(), encoding_chars).strip()

    texts = [read(msa.msa_3), read(msa.msa_6.ce_2) or read(msa.msa_6.ce_1)]
    for err in (s for s in segments if s.name == "ERR"):
        texts += [read(err.err_8), read(err.err_7),
                  read(err.err_3.cwe_2) or read(err.err_3.cwe_1),
                  read(err.err_1.eld_4.ce_2) or read(err.err_1.eld_4.ce_1)]
    unique = list(dict.fromkeys(t for t in texts if t))
    return Ack(code=read(msa.msa_1).upper(), control_id=read(msa.msa_2),
               text="; ".join(unique) or None)


def _unescape(value: str, encoding_chars: dict[str, str]) -> str:
    """Undo the HL7 escapes of delimiters (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\); drop highlighting."""
    esc = encoding_chars["ESCAPE"]
    table = {"F": encoding_chars["FIELD"], "S": encoding_chars["COMPONENT"],
             "T": encoding_chars["SUBCOMPONENT"], "R": encoding_chars["REPETITION"], "E": esc,
             "H": "", "N": "", ".br": " "}
    pattern = re.compile(f"{re.escape(esc)}([^{re.escape(esc)}]*){re.escape(esc)}")
    return pattern.sub(lambda m: table.get(m.group(1), m.group(0)), value)


_ACK_MEANING = {"AE": "application error", "AR": "application reject",
                "CE": "commit error", "CR": "commit reject"}


# --------------------------------------------------------------------------------- destination

@dataclass
class MLLPDestination:
    """A RIS (or any HL7 v2 receiver) reached over MLLP.

    :meth:`send` reads the ER7 message file the daemon wrote, sends it in one MLLP frame
    (0x0B message 0x1C 0x0D) on a new connection, and waits for the ACK: it returns when MSA-1 is
    AA or CA and MSA-2 is the message's MSH-10, and raises :class:`~dicom_io.errors.SendError`
    otherwise (AE/AR with the RIS's error text, another control ID, no ACK, timeout, refused).
    The dispatcher retries a SendError like a failed C-STORE.
    """

    name: str
    host: str
    port: int
    #: seconds to connect, and then to receive the whole ACK
    timeout_s: float = 30.0

    def describe(self) -> str:
        return f"{self.name} (MLLP {self.host}:{self.port})"

    def send(self, path: Path, *, origin: Origin | None = None) -> None:
        """Deliver the HL7 message at ``path``; ``origin`` (the DICOM sender) is not used."""
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SendError(f"cannot read {Path(path).name}: {exc}") from exc
        message = "".join(line + "\r" for line in re.split(r"\r\n|\n|\r", text.strip("\r\n")) if line)
        control_id = _control_id_of(message)
        if control_id is None:
            raise SendError(f"{Path(path).name} is not an HL7 message with an MSH-10 control ID")
        answer = self._exchange(message.encode("utf-8"))
        try:
            ack = parse_ack(answer)
        except ValueError as exc:
            raise SendError(f"{self.describe()}: unreadable ACK for {control_id}: {exc}") from exc
        if ack.control_id != control_id:
            raise SendError(f"{self.describe()}: ACK is for control ID {ack.control_id!r}, "
                            f"not {control_id!r}")
        if not ack.accepted:
            meaning = _ACK_MEANING.get(ack.code, "not accepted")
            why = (ack.text or "no error text")[:_MAX_ERROR_TEXT]
            raise SendError(f"{self.describe()}: {control_id} answered {ack.code or '(empty)'} "
                            f"({meaning}): {why}")
        log.debug("%s accepted %s (%s)", self.describe(), control_id, ack.code)

    def _exchange(self, payload: bytes) -> str:
        """Send one framed message, return the ACK's text (without the frame)."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except ConnectionRefusedError as exc:
            raise SendError(f"{self.describe()}: cannot connect: connection refused") from exc
        except TimeoutError as exc:
            raise SendError(f"{self.describe()}: cannot connect: timed out after "
                            f"{self.timeout_s:g} s") from exc
        except OSError as exc:  # name resolution, unreachable network, ...
            raise SendError(f"{self.describe()}: cannot connect: {exc}") from exc
        deadline = time.monotonic() + self.timeout_s
        buf = bytearray()
        try:
            with sock:
                sock.sendall(MLLP_START + payload + MLLP_END)
                while (end := buf.find(MLLP_END)) < 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    sock.settimeout(remaining)
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise SendError(f"{self.describe()}: connection closed before an ACK")
                    buf += chunk
                    if len(buf) > _MAX_ACK_BYTES:
                        raise SendError(f"{self.describe()}: answer larger than {_MAX_ACK_BYTES} bytes")
        except TimeoutError as exc:
            raise SendError(f"{self.describe()}: no ACK within {self.timeout_s:g} s") from exc
        except OSError as exc:
            raise SendError(f"{self.describe()}: connection lost: {exc}") from exc
        start = buf.find(MLLP_START)
        if start < 0 or start > end:
            raise SendError(f"{self.describe()}: the answer is not an MLLP frame")
        return bytes(buf[start + 1:end]).decode("utf-8", errors="replace")


def _control_id_of(message: str) -> str | None:
    """MSH-10 of an ER7 message, read with hl7apy; None when there is none."""
    if not message.startswith("MSH"):
        return None
    try:
        encoding_chars, _, _ = get_message_info(message)
        msh = parse_segments(message.split("\r", 1)[0], version=VERSION, encoding_chars=encoding_chars,
                             validation_level=VALIDATION_LEVEL.TOLERANT)[0]
    except (HL7apyException, IndexError):
        return None
    value = _unescape(msh.msh_10.to_er7(), encoding_chars).strip()
    return value or None
