"""A corpus of legal-but-odd headers (and the illegal ones modalities send anyway), for the tests
of issue 17: a report is never lost to a header value.

Each entry changes the patient, study, series and equipment attributes of a synthetic CR study
(``dicom_io.synthetic``); :func:`odd_study` writes it as files, as a modality would send them:

* ``max_length``: every string attribute the outputs copy (:func:`copied_keywords`, the
  modules highdicom copies) at its VR's maximum length, multi-valued ones with three values;
* ``multi_valued``: several values in attributes whose VM is 1 (``DOE^JOHN\\SMITH^JANE``);
* ``enumerations``: every enumerated value outside the standard's list, a lower-case code;
* ``dates``: dates and times that are not (19790230, 1979-02-15, 12:30:00, 246000);
* ``controls``: C0, DEL, C1 (NEL U+0085), U+2028/U+2029, the MLLP frame bytes, HL7 delimiters;
* ``latin1``, ``utf8``, ``japanese`` (ISO 2022 IR 87), ``korean`` (ISO 2022 IR 149),
  ``chinese`` (GB18030): names and descriptions in those character sets, at their lengths;
* ``issuer_24``: Issuer of Patient ID of 24 characters (a legal LO; longer than HL7's IS).

The patient names and IDs are made up; none matches the PHI pattern the suite's log scan uses
except where noted, so the scan (tests/test_phi_in_logs.py) would catch them if logged: each
entry's name and ID carry ``ODDPATIENT``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicom_io.synthetic import StudySpec, make_study

#: what each entry's patient name and ID contain, so a test can look for them in logs
MARKER = "ODDPATIENT"


def copied_keywords() -> frozenset[str]:
    """The attributes at the root of the modules highdicom copies into an output (Patient and
    Study information entities), and of General Series and General Equipment."""
    from highdicom._standard_utils import get_module_attribute_map

    modules = get_module_attribute_map()
    names = ("patient", "general-study", "patient-study", "clinical-trial-subject",
             "clinical-trial-study", "general-series", "general-equipment")
    return frozenset(str(i["keyword"]) for n in names for i in modules[n] if not i["path"])


#: enumerated values (PS3.3) of the copied attributes that have them
ENUMERATED = {
    "PatientSex": ("M", "F", "O"), "PatientSexNeutered": ("ALTERED", "UNALTERED"),
    "PatientIdentityRemoved": ("YES", "NO"), "QualityControlSubject": ("YES", "NO"),
    "TypeOfPatientID": ("TEXT", "RFID", "BARCODE"), "SmokingStatus": ("YES", "NO", "UNKNOWN"),
    "Laterality": ("R", "L"), "AnatomicalOrientationType": ("BIPED", "QUADRUPED"),
    "VOILUTFunction": ("LINEAR", "LINEAR_EXACT", "SIGMOID"),
}

#: attributes that make the image what it is (its modality decides whether it is scored)
_KEPT = {"Modality", "BodyPartExamined", "SpecificCharacterSet"}

#: a legal value at the maximum length of each VR (PN: one group of 64)
_MAX = {
    "AE": "A" * 16, "AS": "099Y", "CS": "ABCDEFGHIJ_KLM 1", "DA": "20261231",
    "DS": "1234567890.12345", "DT": "20261231235959.999999+0100", "IS": "+00000000001",
    "LO": "L" * 64, "LT": "T" * 10240, "PN": "F" * 31 + "^" + "G" * 32, "SH": "S" * 16,
    "ST": "S" * 1024, "TM": "235959.999999", "UC": "U" * 2000, "UR": "http://example.org/" + "u" * 200,
    "UT": "X" * 20000,
}


def _string_keywords() -> list[str]:
    out = []
    for keyword in sorted(copied_keywords() - _KEPT):
        vr = dictionary_VR(tag_for_keyword(keyword))
        if vr in _MAX:
            out.append(keyword)
    return out


def max_length(ds: Dataset) -> None:
    for keyword in _string_keywords():
        vr = dictionary_VR(tag_for_keyword(keyword))
        value = _MAX[vr]
        if keyword in ENUMERATED:
            value = max(ENUMERATED[keyword], key=len)
        elif vr == "CS" and keyword in ("PatientPosition",):
            value = "HFS"
        values = [value] * (3 if "n" in dictionary_VM(tag_for_keyword(keyword)) else 1)
        setattr(ds, keyword, values if len(values) > 1 else value)
    ds.PatientName = f"{MARKER}{'F' * 21}^{'G' * 32}"  # 64
    ds.PatientID = f"{MARKER}-" + "9" * 53  # 64


def multi_valued(ds: Dataset) -> None:
    ds.PatientName = f"{MARKER}^JOHN\\SMITH^JANE"
    ds.PatientID = f"{MARKER}-1\\{MARKER}-2"
    ds.IssuerOfPatientID = "NORTH\\SOUTH"
    ds.AccessionNumber = "ACC1\\ACC2"
    ds.StudyID = "1\\2"
    ds.StudyDescription = "XR HAND\\XR WRIST"
    ds.PatientBirthDate = "19790215\\19800101"
    ds.PatientSex = "M\\F"
    ds.ReferringPhysicianName = "WHO^A\\WHO^B"
    ds.InstitutionName = "NORTH\\SOUTH"
    ds.OtherPatientNames = ["A^B", "C^D", "E^F"]
    ds.SoftwareVersions = ["1", "2", "3"]


def enumerations(ds: Dataset) -> None:
    ds.PatientName = f"{MARKER}^ENUM"
    ds.PatientID = f"{MARKER}-ENUM"
    for keyword in ENUMERATED:
        setattr(ds, keyword, "NOT_LISTED")
    ds.PatientSex = "Q"
    ds.RequestedProcedurePriority = "URGENT"
    item = Dataset()
    item.RequestedProcedureID = "RP1"
    item.ScheduledProcedureStepPriority = "whenever"
    ds.RequestAttributesSequence = [item]


def sex_lower_case(ds: Dataset) -> None:
    ds.PatientName = f"{MARKER}^LOWER"
    ds.PatientID = f"{MARKER}-LOWER"
    ds.PatientSex = "m"
    ds.Laterality = "l"


def dates(ds: Dataset) -> None:
    ds.PatientName = f"{MARKER}^DATES"
    ds.PatientID = f"{MARKER}-DATES"
    ds.PatientBirthDate = "19790230"
    ds.StudyDate = "1979-02-15"
    ds.SeriesDate = "20261399"
    ds.StudyTime = "12:30:00"
    ds.PatientBirthTime = "246000"
    ds.PatientAge = "42"
    # a DS pydicom cannot even read as a number (it raises, not warns): written raw
    tag = tag_for_keyword("PatientWeight")
    ds[tag] = RawDataElement(tag, "DS", 4, b"70kg", 0, False, True)


def controls(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = f"{MARKER}\u2028X^JO\u0085HN\u2029"
    ds.PatientID = f"{MARKER}\x0b-\x1c\x0d7\x07"
    ds.IssuerOfPatientID = "ISS\x7fUER"
    ds.AccessionNumber = "AC\x00C1"
    ds.StudyDescription = "XR\r\nHAND\x1c|^~\\&"
    ds.InstitutionName = "O|Brien^Ann&Co~x"
    ds.InstitutionAddress = "Line 1\r\nLine 2\x85\x0b"
    ds.PatientComments = "tab\there\x0cform\x1bfeed"
    ds.ReferringPhysicianName = "DR\u2028WHO"


def latin1(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"{MARKER}Müller^Zoë=^="
    ds.PatientID = f"{MARKER}-ÄÖÜ"
    ds.StudyDescription = "Röntgen Hand " + "ä" * 51
    ds.InstitutionName = "Hôpital de la Cité"
    ds.ReferringPhysicianName = "Dr. Çelik^Ñandú"


def utf8(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = (f"{MARKER}^{'Z' * 53}=" + "山" * 31 + "^" + "太" * 32 + "="
                      + "や" * 31 + "^" + "た" * 32)
    ds.PatientID = f"{MARKER}-Ω"
    ds.StudyDescription = "手" * 64
    ds.InstitutionName = "Hôpital – Zürich 🏥"
    ds.PatientComments = "😀 " * 100


def japanese(ds: Dataset) -> None:
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = f"{MARKER}^Tarou=山田^太郎=やまだ^たろう"
    ds.PatientID = f"{MARKER}-JP"
    ds.StudyDescription = "胸部単純撮影"
    ds.InstitutionName = "東京病院"


def korean(ds: Dataset) -> None:
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 149"]
    ds.PatientName = f"{MARKER}^Gildong=洪^吉洞=홍^길동"
    ds.PatientID = f"{MARKER}-KR"
    ds.StudyDescription = "손 검사"


def chinese(ds: Dataset) -> None:
    ds.SpecificCharacterSet = "GB18030"
    ds.PatientName = f"{MARKER}^XiaoDong=王^小东="
    ds.PatientID = f"{MARKER}-CN"
    ds.StudyDescription = "手部X光检查"
    ds.InstitutionName = "北京医院"


def issuer_24(ds: Dataset) -> None:
    ds.PatientName = f"{MARKER}^ISSUER"
    ds.PatientID = f"{MARKER}-ISSUER"
    ds.IssuerOfPatientID = "HOSPITAL-NORTH-CAMPUS-24"


ENTRIES: dict[str, Callable[[Dataset], None]] = {
    f.__name__: f for f in (max_length, multi_valued, enumerations, sex_lower_case, dates,
                            controls, latin1, utf8, japanese, korean, chinese, issuer_24)
}


def odd_study(folder: Path, entry: str, *, views: int = 2, **spec: object) -> list[Path]:
    """The study of ``entry`` (a key of :data:`ENTRIES`) written to ``folder``, one file a view
    (64 x 64 CR unless ``spec`` says otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    options = {"rows": 64, "columns": 64, **spec}
    for n, ds in enumerate(make_study(StudySpec(views=views, **options))):  # type: ignore[arg-type]
        with warnings.catch_warnings():  # pydicom warns at once about what is meant to be odd
            warnings.simplefilter("ignore")
            ENTRIES[entry](ds)
            path = folder / f"view{n + 1}.dcm"
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
