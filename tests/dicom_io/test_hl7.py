"""Tests for dicom_io.hl7: ORM^O01 / OMI^O23 order updates, ORU^R01 results, MLLP sends.

The messages are read back with hl7apy's parser and validated with its STRICT level (see
``assert_valid`` for the two hl7apy limits worked around). The MLLP tests run hl7apy's own
MLLP server on a free loopback port as the RIS.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import ValidationError
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message, parse_segment
from hl7apy.validation import Validator

from dicom_io.errors import SendError
from dicom_io.hl7 import (
    FINDING_SITES,
    Ack,
    HL7Finding,
    HL7Order,
    MLLPDestination,
    Sender,
    build_order_update,
    build_result,
    hl7_priority,
    parse_ack,
    should_raise_priority,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.12345"
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
NOTICE = "DEMO MODEL - trained on synthetic radiographs - not for clinical use"

ORDER = HL7Order(
    study_instance_uid=STUDY_UID,
    accession_number="ACC123",
    patient_id="PAT-0042",
    patient_name="Doe^Jane^Q^Dr^Jr",
    issuer_of_patient_id="HOSP",
    requested_procedure_id="RP77",
    study_description="XR HAND 2 VIEWS",
    order_priority="ROUTINE",
    scheduled_procedure_step_id="SPS9",
    modality="DX",
)
ABNORMAL_HIGH = HL7Finding(probability=0.8712, abnormal=True, priority="HIGH", threshold=0.5,
                           algorithm_name="radtriage-densenet169", algorithm_version="1.2.0",
                           study_type="HAND", notice=NOTICE)
ELEVATED = dataclasses.replace(ABNORMAL_HIGH, probability=0.61, priority="ELEVATED", notice=None)
NORMAL_ROUTINE = HL7Finding(probability=0.12, abnormal=False, priority="ROUTINE", threshold=0.5,
                            algorithm_name="radtriage-densenet169", algorithm_version="1.2.0",
                            study_type="WRIST", notice=NOTICE)
NOT_ANALYSED = HL7Finding(probability=None, abnormal=None, priority="ROUTINE", threshold=0.5,
                          algorithm_name="radtriage-densenet169", algorithm_version="1.2.0",
                          reason="no radiograph in the study", notice=NOTICE)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def segments(er7: str) -> list[str]:
    assert er7.endswith("\r") and "\n" not in er7
    return er7[:-1].split("\r")


def seg(er7: str, name: str, index: int = 0) -> Any:
    """The ``index``-th segment called ``name``, parsed by hl7apy (v2.5.1)."""
    found = [s for s in segments(er7) if s.startswith(name + "|")]
    return parse_segment(found[index], version="2.5.1")


def names(er7: str) -> list[str]:
    return [s[:3] for s in segments(er7)]


def obx_by_code(er7: str) -> dict[str, Any]:
    """OBX-3.1 -> the parsed OBX segment."""
    out = {}
    for i, _ in enumerate(s for s in segments(er7) if s.startswith("OBX|")):
        obx = seg(er7, "OBX", i)
        out[obx.obx_3.ce_1.to_er7()] = obx
    return out


def assert_valid(er7: str) -> Message:
    """Parse with hl7apy at STRICT and validate.

    Worked around (see dicom_io.hl7): hl7apy cannot place Z segments in groups, so ZDS is left out
    of the message check; and its validator wants every branch of the ORM^O01 choice group
    (OBR | RQD | RQ1 | RXO | ODS | ODT), so for ORM^O01 that must be the one error, and every
    segment is validated on its own instead.
    """
    plain = "\r".join(s for s in segments(er7) if not s.startswith("Z"))
    msg = parse_message(plain, validation_level=VALIDATION_LEVEL.STRICT)
    if msg.name == "ORM_O01":
        with pytest.raises(ValidationError, match="ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP.RQD"):
            msg.validate()
        for text in plain.split("\r"):
            Validator.validate(parse_segment(text, version="2.5.1",
                                             validation_level=VALIDATION_LEVEL.STRICT))
    else:
        assert msg.validate()
    return msg


# --------------------------------------------------------------------------
# the never-lower rule
# --------------------------------------------------------------------------


@pytest.mark.parametrize("new, order_priority, already_sent, expected", [
    # ROUTINE never sends
    ("ROUTINE", None, None, False),
    ("ROUTINE", "LOW", None, False),
    # a routine (or unknown-to-nobody) order is raised
    ("HIGH", None, None, True),
    ("HIGH", "", None, True),
    ("HIGH", "ROUTINE", None, True),
    ("HIGH", "MEDIUM", None, True),
    ("HIGH", "low", None, True),
    ("ELEVATED", None, None, True),
    ("ELEVATED", "ROUTINE", None, True),
    # DICOM HIGH is at ELEVATED (ASAP): HIGH (stat) raises it, ELEVATED does not
    ("HIGH", "HIGH", None, True),
    ("ELEVATED", "HIGH", None, False),
    # a STAT order is already at the top
    ("HIGH", "STAT", None, False),
    ("ELEVATED", "STAT", None, False),
    (" HIGH ", "STAT", None, None),  # not a radtriage term: ValueError, see below
    # an unknown DICOM term is treated as STAT: never risk lowering it
    ("HIGH", "URGENT", None, False),
    # what radtriage already sent
    ("HIGH", None, "HIGH", False),
    ("ELEVATED", None, "HIGH", False),
    ("ELEVATED", None, "ELEVATED", False),
    ("HIGH", None, "ELEVATED", True),
    ("HIGH", "ROUTINE", "ROUTINE", True),
    ("HIGH", "HIGH", "ELEVATED", True),
    ("HIGH", "STAT", "ELEVATED", False),
])
def test_never_lower(new: str, order_priority: str | None, already_sent: str | None,
                     expected: bool | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            should_raise_priority(new, order_priority, already_sent)
    else:
        assert should_raise_priority(new, order_priority, already_sent) is expected


def test_never_lower_rejects_unknown_radtriage_priorities() -> None:
    with pytest.raises(ValueError):
        should_raise_priority("URGENT", None, None)
    with pytest.raises(ValueError):
        should_raise_priority("HIGH", None, "STAT")


def test_hl7_priority() -> None:
    assert [hl7_priority(p) for p in ("HIGH", "ELEVATED", "ROUTINE")] == ["S", "A", "R"]
    with pytest.raises(ValueError):
        hl7_priority("STAT")


# --------------------------------------------------------------------------
# ORM^O01 / OMI^O23
# --------------------------------------------------------------------------


def test_orm_abnormal_high() -> None:
    er7 = build_order_update(ORDER, ABNORMAL_HIGH, control_id="RT-1", now=NOW)
    assert names(er7) == ["MSH", "PID", "ORC", "OBR", "ZDS"]
    assert_valid(er7)
    msh = seg(er7, "MSH")
    assert msh.msh_3.to_er7() == "RADTRIAGE" and msh.msh_5.to_er7() == "RIS"
    assert msh.msh_7.to_er7() == "20260304050607+0000"
    assert msh.msh_9.to_er7() == "ORM^O01^ORM_O01"
    assert msh.msh_10.to_er7() == "RT-1"
    assert msh.msh_11.to_er7() == "P" and msh.msh_12.to_er7() == "2.5.1"
    pid = seg(er7, "PID")
    assert pid.pid_3.to_er7() == "PAT-0042^^^HOSP"
    assert pid.pid_5.to_er7() == "Doe^Jane^Q^Jr^Dr"  # XPN: family, given, middle, suffix, prefix
    orc = seg(er7, "ORC")
    assert orc.orc_1.to_er7() == "XO"
    assert orc.orc_2.to_er7() == orc.orc_3.to_er7() == "ACC123"
    assert orc.orc_7.tq_6.to_er7() == "S"
    obr = seg(er7, "OBR")
    assert obr.obr_2.to_er7() == obr.obr_3.to_er7() == "ACC123"
    assert obr.obr_4.to_er7() == "^XR HAND 2 VIEWS"
    assert obr.obr_18.to_er7() == "ACC123"  # IHE SWF: accession number in placer field 1
    assert obr.obr_19.to_er7() == "RP77"
    assert obr.obr_20.to_er7() == "SPS9"
    assert obr.obr_27.tq_6.to_er7() == "S"
    zds = parse_segment(segments(er7)[-1], version="2.5.1")
    assert zds.zds_1.to_er7() == f"{STUDY_UID}^RADTRIAGE^Application^DICOM"


def test_orm_elevated_is_asap() -> None:
    er7 = build_order_update(ORDER, ELEVATED, control_id="RT-2", now=NOW)
    assert seg(er7, "ORC").orc_7.tq_6.to_er7() == "A"
    assert seg(er7, "OBR").obr_27.tq_6.to_er7() == "A"


def test_omi_abnormal_high() -> None:
    er7 = build_order_update(ORDER, ABNORMAL_HIGH, control_id="RT-3", now=NOW, message_type="OMI^O23")
    assert names(er7) == ["MSH", "PID", "ORC", "TQ1", "OBR", "IPC"]
    assert_valid(er7)
    assert seg(er7, "MSH").msh_9.to_er7() == "OMI^O23^OMI_O23"
    orc = seg(er7, "ORC")
    assert orc.orc_1.to_er7() == "XO"
    assert orc.orc_3.to_er7() == "ACC123"
    assert orc.orc_7.to_er7() == ""  # 2.5.1: timing and priority live in TQ1
    assert seg(er7, "TQ1").tq1_9.to_er7() == "S^Stat^HL70485"
    ipc = seg(er7, "IPC")
    assert ipc.ipc_1.to_er7() == "ACC123"
    assert ipc.ipc_2.to_er7() == "RP77"
    assert ipc.ipc_3.to_er7() == STUDY_UID
    assert ipc.ipc_4.to_er7() == "SPS9"
    assert ipc.ipc_5.to_er7() == "DX^^DCM"


@pytest.mark.parametrize("message_type", ["ORM^O01", "OMI^O23"])
@pytest.mark.parametrize("finding", [NORMAL_ROUTINE, NOT_ANALYSED], ids=["normal", "not-analysed"])
def test_routine_never_builds_an_order_update(message_type: Literal["ORM^O01", "OMI^O23"],
                                               finding: HL7Finding) -> None:
    with pytest.raises(ValueError, match="would not raise"):
        build_order_update(ORDER, finding, control_id="RT-4", now=NOW, message_type=message_type)


@pytest.mark.parametrize("order_priority", ["STAT", "URGENT"])
def test_order_update_refuses_to_lower_a_stat_order(order_priority: str) -> None:
    order = dataclasses.replace(ORDER, order_priority=order_priority)
    with pytest.raises(ValueError, match="would not raise"):
        build_order_update(order, ABNORMAL_HIGH, control_id="RT-5", now=NOW)


def test_order_update_needs_an_accession_number() -> None:
    with pytest.raises(ValueError, match="accession"):
        build_order_update(dataclasses.replace(ORDER, accession_number=None), ABNORMAL_HIGH,
                           control_id="RT-6", now=NOW)


def test_omi_needs_the_ipc_identifiers() -> None:
    order = dataclasses.replace(ORDER, scheduled_procedure_step_id=None)
    with pytest.raises(ValueError, match="scheduled_procedure_step_id"):
        build_order_update(order, ABNORMAL_HIGH, control_id="RT-7", now=NOW, message_type="OMI^O23")
    # ORM^O01 does without it
    assert "OBR" in names(build_order_update(order, ABNORMAL_HIGH, control_id="RT-7", now=NOW))


def test_order_numbers_from_the_study_when_given() -> None:
    order = dataclasses.replace(ORDER, placer_order_number="PL1", filler_order_number="FI1")
    er7 = build_order_update(order, ABNORMAL_HIGH, control_id="RT-8", now=NOW)
    assert seg(er7, "ORC").orc_2.to_er7() == "PL1" and seg(er7, "ORC").orc_3.to_er7() == "FI1"
    assert seg(er7, "OBR").obr_18.to_er7() == "ACC123"


def test_sender_and_naive_time() -> None:
    sender = Sender("TRIAGE", "XRAY", "RISAPP", "HOSP")
    er7 = build_order_update(ORDER, ABNORMAL_HIGH, control_id="RT-9",
                             now=datetime.datetime(2026, 1, 2, 3, 4, 5), sender=sender)
    msh = seg(er7, "MSH")
    assert [msh.msh_3.to_er7(), msh.msh_4.to_er7(), msh.msh_5.to_er7(), msh.msh_6.to_er7()] == \
        ["TRIAGE", "XRAY", "RISAPP", "HOSP"]
    assert msh.msh_7.to_er7() == "20260102030405"
    assert segments(er7)[-1].split("|")[1].split("^")[1] == "TRIAGE"  # ZDS-1.2


def test_values_longer_than_their_field_are_cut_to_it() -> None:
    """Issue 17: a value hl7apy would refuse as too long (an IS of 20, an ST of 199) is cut to
    the field's length rather than costing the study its message."""
    er7 = build_order_update(ORDER, ABNORMAL_HIGH, control_id="RT-9", now=NOW,
                             sender=Sender(sending_application="A" * 21))
    assert_valid(er7)
    assert seg(er7, "MSH").msh_3.to_er7() == "A" * 20
    er7 = build_result(dataclasses.replace(ORDER, patient_id="P" * 300), ABNORMAL_HIGH,
                       control_id="RT-9", now=NOW)
    assert_valid(er7)
    assert seg(er7, "PID").pid_3.cx_1.to_er7() == "P" * 199


def test_several_ids_and_names_are_repetitions_and_line_separators_spaces() -> None:
    """Issue 17: never the repr of a list; a name's ideographic and phonetic groups are
    repetitions of their own (XPN-8 I, P); NEL and U+2028 end no line in the RIS."""
    order = dataclasses.replace(
        ORDER, patient_id=("P1", "P\u20282"),
        patient_name=("Yamada^Tarou=山田^太郎=やまだ^たろう", "DOE\x85^JOHN"))
    er7 = build_result(order, ABNORMAL_HIGH, control_id="RT-8", now=NOW)
    assert_valid(er7)
    pid = next(s for s in segments(er7) if s.startswith("PID|")).split("|")
    assert pid[3] == "P1^^^HOSP~P 2"
    assert pid[5] == "Yamada^Tarou^^^^^^A~山田^太郎^^^^^^I~やまだ^たろう^^^^^^P~DOE^JOHN"
    assert "\u2028" not in er7 and "\x85" not in er7


def test_values_hl7apy_refuses_are_value_errors_without_the_value(monkeypatch) -> None:
    import dicom_io.hl7 as hl7
    from hl7apy.exceptions import MaxLengthReached

    real = hl7.datatype_factory

    def refuse(datatype, value, **kw):  # type: ignore[no-untyped-def]
        if value == "PAT-0042":
            raise MaxLengthReached(value, 5)
        return real(datatype, value, **kw)

    monkeypatch.setattr(hl7, "datatype_factory", refuse)
    with pytest.raises(ValueError, match=r"hl7apy refused a value of the ORU\^R01 \(MaxLengthReached\)") \
            as info:
        build_result(ORDER, ABNORMAL_HIGH, control_id="RT-9", now=NOW)
    assert "PAT-0042" not in str(info.value) and info.value.__cause__ is None


@pytest.mark.parametrize("control_id", ["", "x" * 21, "a|b", "a b", None])
def test_bad_control_ids(control_id: str) -> None:
    with pytest.raises(ValueError, match="control_id"):
        build_result(ORDER, ABNORMAL_HIGH, control_id=control_id, now=NOW)


# --------------------------------------------------------------------------
# ORU^R01
# --------------------------------------------------------------------------


def test_oru_abnormal_high() -> None:
    er7 = build_result(ORDER, ABNORMAL_HIGH, control_id="RT-10", now=NOW)
    assert names(er7) == ["MSH", "PID", "ORC", "OBR", "NTE"] + ["OBX"] * 8
    assert_valid(er7)
    assert seg(er7, "MSH").msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert seg(er7, "PID").pid_3.to_er7() == "PAT-0042^^^HOSP"
    orc, obr = seg(er7, "ORC"), seg(er7, "OBR")
    assert orc.orc_1.to_er7() == "RE" and orc.orc_3.to_er7() == "ACC123"
    assert obr.obr_3.to_er7() == "ACC123" and obr.obr_18.to_er7() == "ACC123"
    assert obr.obr_4.to_er7() == "AI-TRIAGE^AI triage^99RADTRIAGE"
    assert obr.obr_25.to_er7() == "P"
    assert seg(er7, "NTE").nte_3.to_er7() == NOTICE

    obx = obx_by_code(er7)
    assert list(obx) == ["121402", "122157", "THRESHOLD", "PRIORITY", "111001", "111003",
                         "363698007", "110180"]
    assert [o.obx_1.to_er7() for o in obx.values()] == [str(i) for i in range(1, 9)]
    assert all(o.obx_11.to_er7() == "P" for o in obx.values())
    assert all(o.obx_14.to_er7() == "20260304050607+0000" for o in obx.values())
    finding = obx["121402"]
    assert finding.obx_2.to_er7() == "CWE"
    assert finding.obx_3.to_er7() == "121402^Normality^DCM"
    assert finding.obx_5.to_er7() == "263654008^Abnormal^SCT"
    assert finding.obx_8.to_er7() == "A"
    prob = obx["122157"]
    assert prob.obx_2.to_er7() == "NM"
    assert prob.obx_5.to_er7() == "0.8712"
    assert prob.obx_6.to_er7() == "1^no units^UCUM"
    assert obx["THRESHOLD"].obx_5.to_er7() == "0.5"
    assert obx["PRIORITY"].obx_5.to_er7() == "HIGH"
    assert obx["111001"].obx_2.to_er7() == "ST"
    assert obx["111001"].obx_5.to_er7() == "radtriage-densenet169"
    assert obx["111003"].obx_5.to_er7() == "1.2.0"
    assert obx["363698007"].obx_5.to_er7() == "85562004^Hand^SCT"
    assert obx["110180"].obx_5.to_er7() == STUDY_UID


def test_oru_normal_routine() -> None:
    er7 = build_result(ORDER, NORMAL_ROUTINE, control_id="RT-11", now=NOW)
    assert_valid(er7)
    obx = obx_by_code(er7)
    assert obx["121402"].obx_5.to_er7() == "17621005^Normal^SCT"
    assert obx["121402"].obx_8.to_er7() == "N"
    assert obx["122157"].obx_5.to_er7() == "0.12"
    assert obx["PRIORITY"].obx_5.to_er7() == "ROUTINE"
    assert obx["363698007"].obx_5.to_er7() == "74670003^Wrist joint^SCT"
    assert "121106" not in obx  # no "not analysed" comment
    assert seg(er7, "NTE").nte_3.to_er7() == NOTICE


def test_oru_not_analysed() -> None:
    er7 = build_result(ORDER, NOT_ANALYSED, control_id="RT-12", now=NOW)
    assert_valid(er7)
    obx = obx_by_code(er7)
    assert "122157" not in obx  # no probability
    assert obx["121402"].obx_5.to_er7() == "371934000^Normality Undetermined^SCT"
    assert obx["121402"].obx_8.to_er7() == ""
    assert obx["121106"].obx_2.to_er7() == "TX"
    assert obx["121106"].obx_5.to_er7() == "Not analysed: no radiograph in the study"
    assert "363698007" not in obx  # no study type
    assert seg(er7, "NTE").nte_3.to_er7() == NOTICE


def test_oru_without_notice_has_no_nte() -> None:
    er7 = build_result(ORDER, ELEVATED, control_id="RT-13", now=NOW)
    assert "NTE" not in names(er7)


def test_oru_without_accession_or_patient() -> None:
    order = HL7Order(study_instance_uid=STUDY_UID, accession_number=None, patient_id=None,
                     patient_name=None)
    er7 = build_result(order, NOT_ANALYSED, control_id="RT-14", now=NOW)
    assert names(er7)[:3] == ["MSH", "ORC", "OBR"]
    assert_valid(er7)
    assert seg(er7, "OBR").obr_3.to_er7() == ""
    assert obx_by_code(er7)["110180"].obx_5.to_er7() == STUDY_UID


def test_delimiters_and_line_breaks_are_escaped() -> None:
    order = dataclasses.replace(ORDER, patient_name="O|Brien^Ann&Co\\x^~", patient_id="A^B",
                                study_description="XR\r\nHAND | 2~views")
    finding = dataclasses.replace(NOT_ANALYSED, reason="bad | header\rwith ^ & ~ \\",
                                  notice="DEMO\nMODEL | x")
    er7 = build_result(order, finding, control_id="RT-15", now=NOW)
    assert len(segments(er7)) == len(names(build_result(ORDER, NOT_ANALYSED, control_id="X", now=NOW)))
    assert_valid(er7)
    pid = seg(er7, "PID")
    assert pid.pid_3.cx_1.to_er7() == r"A\S\B"
    assert pid.pid_5.xpn_1.to_er7() == r"O\F\Brien"
    assert pid.pid_5.xpn_2.to_er7() == r"Ann\T\Co\E\x"
    assert seg(er7, "NTE").nte_3.to_er7() == r"DEMO MODEL \F\ x"
    assert obx_by_code(er7)["121106"].obx_5.to_er7() == \
        "Not analysed: bad \\F\\ header with \\S\\ \\T\\ \\R\\ \\E\\"
    orm = build_order_update(order, ABNORMAL_HIGH, control_id="RT-16", now=NOW)
    assert seg(orm, "OBR").obr_4.to_er7() == r"^XR HAND \F\ 2\R\views"


def test_non_ascii_names_declare_utf8() -> None:
    er7 = build_result(dataclasses.replace(ORDER, patient_name="Müller^Zoë"), ABNORMAL_HIGH,
                       control_id="RT-17", now=NOW)
    assert seg(er7, "MSH").msh_18.to_er7() == "UNICODE UTF-8"
    assert seg(er7, "PID").pid_5.to_er7() == "Müller^Zoë"
    assert build_result(ORDER, ABNORMAL_HIGH, control_id="RT-18", now=NOW).split("\r")[0] \
        .endswith("|2.5.1")


@pytest.mark.parametrize("change, match", [
    ({"priority": "STAT"}, "priority"),
    ({"probability": 1.5}, "probability"),
    ({"probability": 0.2}, "contradicts"),
    ({"probability": None}, "abnormal must be None"),
    ({"study_type": "KNEE"}, "study_type"),
    ({"algorithm_version": ""}, "algorithm"),
])
def test_inconsistent_findings_are_refused(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_result(ORDER, dataclasses.replace(ABNORMAL_HIGH, **change), control_id="RT-19", now=NOW)


def test_finding_sites_match_the_sr() -> None:
    from dicom_io.sr import FINDING_SITES as SR_SITES

    assert {k: (c.value, c.scheme_designator) for k, c in FINDING_SITES.items()} == \
        {k: (c.value, c.scheme_designator) for k, c in SR_SITES.items()}


# --------------------------------------------------------------------------
# ACKs
# --------------------------------------------------------------------------


def make_ack(code: str, control_id: str, text: str | None = None, *, err: str | None = None,
             version: str = "2.5.1") -> str:
    """An ACK as a RIS would send it, built with hl7apy."""
    ack = Message("ACK", version="2.5.1")
    ack.msh.msh_3 = "RIS"
    ack.msh.msh_7 = "20260304050608"
    ack.msh.msh_9 = "ACK^O01^ACK"
    ack.msh.msh_10 = "R-1"
    ack.msh.msh_11 = "P"
    ack.msh.msh_12 = version
    ack.msa.msa_1 = code
    ack.msa.msa_2 = control_id
    if text:
        ack.msa.msa_3 = text
    if err:
        e = ack.add_segment("ERR")
        e.err_3 = "207^Application internal error^HL70357"
        e.err_4 = "E"
        e.err_8 = err
    return ack.to_er7() + "\r"


def test_parse_ack() -> None:
    assert parse_ack(make_ack("AA", "RT-1")) == Ack(code="AA", control_id="RT-1", text=None)
    ack = parse_ack(make_ack("AE", "RT-1", r"unknown order ACC\F\123", err="order not found"))
    assert ack == Ack("AE", "RT-1", "unknown order ACC|123; order not found; Application internal error")
    assert not ack.accepted
    assert parse_ack(make_ack("CA", "RT-1")).accepted


def test_parse_ack_of_older_and_unknown_versions() -> None:
    v231 = "MSH|^~\\&|RIS|H|RADTRIAGE|R|20260304||ACK|9|P|2.3.1\rMSA|AR|RT-2\rERR|^^^207&Unknown patient\r"
    assert parse_ack(v231) == Ack("AR", "RT-2", "Unknown patient")
    assert parse_ack("MSH|^~\\&|RIS||||20260304||ACK|9|P|2.9\nMSA|AA|RT-3\n").control_id == "RT-3"


@pytest.mark.parametrize("text", ["", "hello", "MSH|^~\\&|RIS||||20260304||ACK|9|P|2.5.1\r"])
def test_parse_ack_rejects_what_is_not_an_ack(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ack(text)


# --------------------------------------------------------------------------
# MLLP
# --------------------------------------------------------------------------


class RIS:
    """hl7apy's MLLP server as a RIS: records each message and answers with ``reply(message)``.

    ``reply`` returning None holds the connection without answering until the test ends.
    """

    def __init__(self, port: int) -> None:
        self.received: list[str] = []
        self.reply = lambda message: make_ack("AA", _control_id(message))
        self.release = threading.Event()
        ris = self

        class Handler(AbstractHandler):
            def reply(self) -> str:
                ris.received.append(self.incoming_message)
                answer = ris.reply(self.incoming_message)
                if answer is None:
                    ris.release.wait(60)
                    return ""
                return "\x0b" + answer + "\x1c\r"

        handlers = {t: (Handler,) for t in ("ORM^O01^ORM_O01", "OMI^O23^OMI_O23", "ORU^R01^ORU_R01")}
        self.server = MLLPServer("127.0.0.1", port, handlers, timeout=30)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> "RIS":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _control_id(message: str) -> str:
    return parse_segment(message.split("\r")[0], version="2.5.1").msh_10.to_er7()


@pytest.fixture
def ris(port: int) -> Iterator[RIS]:
    with RIS(port) as server:
        yield server


@pytest.fixture
def message_file(tmp_path: Path) -> Path:
    path = tmp_path / "RT-20.hl7"
    path.write_bytes(build_result(ORDER, ABNORMAL_HIGH, control_id="RT-20", now=NOW).encode("utf-8"))
    return path


def destination(port: int, timeout_s: float = 10.0) -> MLLPDestination:
    return MLLPDestination(name="ris", host="127.0.0.1", port=port, timeout_s=timeout_s)


def test_send_accepted(ris: RIS, port: int, message_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dicom_io.hl7")
    destination(port).send(message_file, origin=None)
    assert ris.received == [message_file.read_bytes().decode("utf-8")]
    assert "PAT-0042" not in caplog.text and "Doe" not in caplog.text


def test_send_order_update_accepted_with_commit_ack(ris: RIS, port: int, tmp_path: Path) -> None:
    path = tmp_path / "orm.hl7"
    er7 = build_order_update(ORDER, ABNORMAL_HIGH, control_id="RT-21", now=NOW)
    path.write_bytes(er7.encode("utf-8"))
    ris.reply = lambda message: make_ack("CA", _control_id(message))
    destination(port).send(path)
    assert ris.received == [er7]


def test_send_normalises_line_ends(ris: RIS, port: int, tmp_path: Path) -> None:
    er7 = build_result(ORDER, NORMAL_ROUTINE, control_id="RT-22", now=NOW)
    path = tmp_path / "lf.hl7"
    path.write_bytes(er7.replace("\r", "\n").encode())
    destination(port).send(path)
    assert ris.received == [er7]


@pytest.mark.parametrize("code, meaning", [("AE", "application error"), ("AR", "application reject")])
def test_send_error_ack(ris: RIS, port: int, message_file: Path, code: str, meaning: str) -> None:
    ris.reply = lambda message: make_ack(code, _control_id(message), "no such order",
                                         err="accession ACC123 unknown")
    with pytest.raises(SendError) as info:
        destination(port).send(message_file)
    text = str(info.value)
    assert f"answered {code} ({meaning})" in text
    assert "no such order" in text and "accession ACC123 unknown" in text
    assert "ris (MLLP 127.0.0.1:" in text


def test_send_wrong_control_id(ris: RIS, port: int, message_file: Path) -> None:
    ris.reply = lambda message: make_ack("AA", "SOMETHING-ELSE")
    with pytest.raises(SendError, match="control ID 'SOMETHING-ELSE', not 'RT-20'"):
        destination(port).send(message_file)


def test_send_garbage_answer(ris: RIS, port: int, message_file: Path) -> None:
    ris.reply = lambda message: "this is not HL7"
    with pytest.raises(SendError, match="unreadable ACK"):
        destination(port).send(message_file)


def test_send_no_answer_times_out(ris: RIS, port: int, message_file: Path) -> None:
    ris.reply = lambda message: None
    with pytest.raises(SendError, match=r"no ACK within 0\.5 s"):
        destination(port, timeout_s=0.5).send(message_file)
    assert len(ris.received) == 1


def test_send_connection_closed_without_ack(port: int, message_file: Path) -> None:
    # a listener that knows no message type: hl7apy's server closes the connection unanswered
    with RIS(port) as server:
        server.server.handlers = {}
        with pytest.raises(SendError, match="connection closed before an ACK"):
            destination(port).send(message_file)


def test_send_nothing_listening(port: int, message_file: Path) -> None:
    with pytest.raises(SendError, match="cannot connect: connection refused"):
        destination(port).send(message_file)


def test_send_unreadable_file(port: int, tmp_path: Path) -> None:
    with pytest.raises(SendError, match="cannot read"):
        destination(port).send(tmp_path / "missing.hl7")
    bad = tmp_path / "bad.hl7"
    bad.write_text("not hl7")
    with pytest.raises(SendError, match="not an HL7 message"):
        destination(port).send(bad)
