"""Header values made safe for the outputs: what the SR, SC, KOS, GSPS and HL7 builders copy from
the study's own headers, cleaned first, so that no legal-but-odd value (nor an illegal one a
modality sent anyway) can cost the study its report.

Pure logic: datasets in, datasets and strings out; nothing here reads a file or logs a value.

What is cleaned (:data:`CLEANED_KEYWORDS`): every attribute at the root of the modules highdicom
copies into an output (the Patient and Study information entities: Patient, General Study,
Patient Study, Clinical Trial Subject and Study), of the General Series and General Equipment
modules (the summary image and the acquisition equipment item copy those), and the two the
presentation state copies as text (VOILUTFunction, WindowCenterWidthExplanation); sequences among
them are cleaned item by item, every text attribute inside. UIDs are never touched (the receiver
checked them; the outputs reference the study by them).

How a value is cleaned (:func:`clean_dataset`), one rule per problem, each noted
(:class:`Note`: the keyword and what was done, never the value):

* control characters (C0, DEL, C1 including NEL U+0085, and U+2028/U+2029) become a space; the
  text VRs LT, ST and UT keep the CR, LF and FF the standard allows them;
* more values than the attribute's VM allows: one value is kept (the first; free text is joined
  with " / " instead), as a valid single value;
* text too long for its VR (pydicom's :data:`~pydicom.valuerep.MAX_VALUE_LEN`; 64 per
  component group of a PN): cut to it, counted in characters and in the bytes of the character
  set the output will declare (dciodvfy and pydicom count a multi-byte set's bytes); a date,
  time, number or code too long is not cut but dropped, as an invalid one;
* not valid for its VR (a DA that is not a calendar date, TM, DT, AS, DS, IS, CS, AE outside
  their grammar, or a value pydicom cannot read at all) or outside the standard's enumerated
  values (:data:`ENUMERATED`, e.g. PatientSex other than M, F or O): dropped; the attribute
  stays, empty (so a Type 2 attribute is still present).

Character sets: the cleaned copy holds decoded text and declares the source's Specific Character
Set in a form highdicom takes (:func:`output_character_set`); once an output is built,
:func:`declare_character_set` keeps that set when all the output's text fits in it (a value
keeps its length in bytes) and makes it ISO_IR 192 (UTF-8) otherwise.

The list of attributes is highdicom's own (its private ``_standard_utils`` module maps the
standard's modules to attributes; highdicom is pinned below 0.29 in setup.cfg): what is cleaned
is exactly what it copies, in this version and after an upgrade of the standard it follows.

For HL7, :func:`text_values` gives every value of an attribute (a repetition each), cleaned of
control characters and of what its VR does not allow, but not cut: the HL7 builder cuts to its
own field lengths (:mod:`dicom_io.hl7`).
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from highdicom._standard_utils import get_module_attribute_map  # what highdicom itself copies
from highdicom.enum import SpecificCharacterSetValues
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import MAX_VALUE_LEN, PersonName

__all__ = [
    "CLEANED_KEYWORDS",
    "CONTROL_CHARACTERS",
    "ENUMERATED",
    "Cleaned",
    "Note",
    "clean_dataset",
    "declare_character_set",
    "minimal_dataset",
    "output_character_set",
    "strip_controls",
    "text_values",
]

#: C0 controls, DEL, C1 controls (NEL U+0085 among them) and the Unicode line and paragraph
#: separators: none belongs in a name, an ID or a description, and each can end an HL7 segment,
#: a log line or a rendered line
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
#: the same, less what LT, ST and UT may hold (CR, LF and FF; ESC only as part of a code
#: extension, which decoding has consumed; a TAB is refused by dciodvfy, so it goes too)
_TEXT_CONTROLS = re.compile("[\x00-\x09\x0b\x0e-\x1f\x7f-\x9f\u2028\u2029]+")
_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                         "TM", "UC", "UR", "UT"})

#: Enumerated values (PS3.3) of the cleaned attributes that have them; a value outside is dropped
ENUMERATED: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "PatientSexNeutered": frozenset({"ALTERED", "UNALTERED"}),
    "PatientIdentityRemoved": frozenset({"YES", "NO"}),
    "QualityControlSubject": frozenset({"YES", "NO"}),
    "TypeOfPatientID": frozenset({"TEXT", "RFID", "BARCODE"}),
    "SmokingStatus": frozenset({"YES", "NO", "UNKNOWN"}),
    "Laterality": frozenset({"R", "L"}),
    "AnatomicalOrientationType": frozenset({"BIPED", "QUADRUPED"}),
    "VOILUTFunction": frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"}),
}

#: PS3.5 Table 6.2-1 lengths pydicom's table leaves out (DA and DT here without query ranges)
_MAX_LEN = {**MAX_VALUE_LEN, "AS": 4, "DA": 8, "DT": 26, "TM": 14}
_PN_GROUP_MAX = 64

_GRAMMAR = {
    "AS": re.compile(r"\d{3}[DWMY]"),
    "CS": re.compile(r"[A-Z0-9 _]*"),
    "DA": re.compile(r"\d{8}"),
    "DS": re.compile(r" *[+\-]?(\d+|\d+\.\d*|\.\d+)([eE][+\-]?\d+)? *"),
    "DT": re.compile(r"\d{4}((0[1-9]|1[0-2])(([0-2]\d|3[01])(([01]\d|2[0-3])"
                     r"([0-5]\d(([0-5]\d|60)(\.\d{1,6})?)?)?)?)?)?([+-][01]\d[0-5]\d)?"),
    "IS": re.compile(r" *[+\-]?\d+ *"),
    "TM": re.compile(r"([01]\d|2[0-3])([0-5]\d(([0-5]\d|60)(\.\d{1,6})?)?)?"),
    "AE": re.compile(r"[\x20-\x5b\x5d-\x7e]*"),
}


def _copied_keywords() -> frozenset[str]:
    modules = get_module_attribute_map()
    names = {"patient", "general-study", "patient-study", "clinical-trial-subject",
             "clinical-trial-study", "general-series", "general-equipment"}
    return frozenset(str(item["keyword"]) for name in names for item in modules.get(name, ())
                     if not item["path"])


#: The attributes cleaned (see the module docstring)
CLEANED_KEYWORDS: frozenset[str] = _copied_keywords() | {
    "VOILUTFunction", "WindowCenterWidthExplanation"}

#: Type 2 attributes an output needs present (empty when unknown) in the minimal dataset
_TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                   "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDate",
                   "StudyTime")


@dataclass(frozen=True)
class Note:
    """What cleaning did to one attribute; never the value."""

    keyword: str
    change: str

    def __str__(self) -> str:
        return f"{self.keyword} {self.change}"


@dataclass(frozen=True)
class Cleaned:
    dataset: Dataset
    notes: tuple[Note, ...]


def strip_controls(text: str, *, free_text: bool = False) -> str:
    """``text`` with every run of control characters (:data:`CONTROL_CHARACTERS`) a space;
    ``free_text`` keeps CR, LF and FF (what LT, ST and UT allow)."""
    return (_TEXT_CONTROLS if free_text else CONTROL_CHARACTERS).sub(" ", text)


# ----------------------------------------------------------------------------- one value

def _is_identifier(keyword: str) -> bool:
    """An identifier (IDs, numbers, issuers): of several values one is kept, never joined."""
    return keyword.endswith(("ID", "Number", "IDs")) or keyword.startswith("IssuerOf")


def _valid_date(text: str) -> bool:
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return True


def _value_problem(vr: str, keyword: str, text: str) -> str | None:
    """Why ``text`` (no controls, not empty) is not a valid value of ``keyword``, or None."""
    grammar = _GRAMMAR.get(vr)
    if grammar is not None and not grammar.fullmatch(text.strip() if vr in ("DS", "IS") else text):
        return f"dropped: not a valid {vr}"
    if vr == "DA" and not _valid_date(text):
        return "dropped: not a calendar date"
    if vr == "DT" and len(text) >= 8 and not _valid_date(text[:8]):
        return "dropped: not a calendar date"
    if vr == "IS" and not -(2**31) <= int(text) < 2**31:
        return "dropped: not a valid IS"
    allowed = ENUMERATED.get(keyword)
    if allowed is not None and text not in allowed:
        return "dropped: not one of its enumerated values"
    return None


def _nbytes(text: str, codec: str) -> int:
    return len(text.encode(codec, errors="replace"))


def _cut(text: str, limit: int, codec: str) -> str:
    """``text`` cut to at most ``limit`` characters and ``limit`` bytes in ``codec`` (readers
    such as dciodvfy count a multi-byte character set's bytes)."""
    if len(text) <= limit and _nbytes(text, codec) <= limit:
        return text
    low, high = 0, min(len(text), limit)
    while low < high:
        mid = (low + high + 1) // 2
        if _nbytes(text[:mid], codec) <= limit:
            low = mid
        else:
            high = mid - 1
    return text[:low]


def _person_name(text: str, codec: str) -> tuple[str, bool]:
    """A PN value with at most three component groups of at most five components, each group
    cut to 64 characters (and bytes); and whether anything was cut."""
    groups = text.split("=")
    cut = len(groups) > 3
    out = []
    for group in groups[:3]:
        parts = group.split("^")
        if len(parts) > 5:
            parts, cut = parts[:4] + [" ".join(parts[4:])], True
        joined = "^".join(parts).rstrip("^")
        shorter = _cut(joined, _PN_GROUP_MAX, codec)
        if shorter != joined:
            joined, cut = shorter.rstrip("^ "), True
        out.append(joined)
    return "=".join(out).rstrip("="), cut


def _clean_text(vr: str, keyword: str, text: str, notes: list[Note],
                codec: str = "utf-8") -> str | None:
    """One value without controls, valid for ``vr`` and its enumeration, or None (dropped)."""
    stripped = strip_controls(text, free_text=vr in _FREE_TEXT_VRS)
    if stripped != text:
        notes.append(Note(keyword, "had control characters, now spaces"))
    text = stripped.rstrip(" \x00") if vr in _FREE_TEXT_VRS else stripped.strip(" \x00")
    if not text:
        return ""
    if vr == "PN":
        text, cut = _person_name(text, codec)
        if cut:
            notes.append(Note(keyword, "cut to 3 groups of 5 components, 64 characters each"))
        return text
    limit = _MAX_LEN.get(vr)
    if limit is not None and vr in ("LO", "SH", "ST", "LT", "AE") and \
            (shorter := _cut(text, limit, codec)) != text:
        text = shorter.rstrip()
        notes.append(Note(keyword, f"cut to the {limit} characters of a {vr}"))
    elif limit is not None and len(text) > limit:
        notes.append(Note(keyword, f"dropped: longer than a {vr} may be"))
        return None
    problem = _value_problem(vr, keyword, text)
    if problem is not None:
        notes.append(Note(keyword, problem))
        return None
    return text


def _strings(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return ["" if v is None else str(v) for v in value]
    return [str(value)]


def _max_values(tag: int) -> int | None:
    """The most values the tag's VM allows; None: no limit."""
    vm = dictionary_VM(tag)
    if "n" in vm:
        return None
    return int(vm.split("-")[-1])


def _clean_values(tag: int, vr: str, keyword: str, value: object, notes: list[Note],
                  codec: str = "utf-8") -> list[str]:
    values = [v for v in (_clean_text(vr, keyword, s, notes, codec) for s in _strings(value))
              if v is not None]
    most = _max_values(tag)
    if most is None or len(values) <= most:
        return values
    kept = [v for v in values if v] or [""]
    if len(kept) <= most:
        return kept
    if most == 1 and vr in ("LO", "SH", "UC") and not _is_identifier(keyword):
        limit = _MAX_LEN.get(vr)
        joined = " / ".join(kept)
        notes.append(Note(keyword, f"had {len(kept)} values, now joined into one"))
        return [_cut(joined, limit, codec).rstrip() if limit else joined]
    notes.append(Note(keyword, f"had {len(kept)} values, only the first "
                               f"{'one' if most == 1 else most} kept"))
    return kept[:most]


def _element(tag: int, vr: str, values: list[str]) -> DataElement:
    if not values or values == [""]:
        return DataElement(tag, vr, None)
    if vr == "PN":
        names = [PersonName(v) for v in values]
        return DataElement(tag, vr, names[0] if len(names) == 1 else names)
    return DataElement(tag, vr, values[0] if len(values) == 1 else values)


# ---------------------------------------------------------------------------- datasets

#: what pydicom raises for a value it cannot read at all (a DS of "70kg", bytes that are not
#: in the declared character set): such a value is dropped, as an invalid one is
_UNREADABLE = (ValueError, TypeError, OverflowError, LookupError)


def _clean_item(item: Dataset, notes: list[Note], everything: bool, codec: str) -> Dataset:
    """A copy of ``item`` with its text attributes cleaned (all of them when ``everything``,
    else those of :data:`CLEANED_KEYWORDS`) and its sequences' items cleaned whole."""
    out = Dataset()
    for tag in list(item.keys()):
        keyword = keyword_for_tag(tag)
        wanted = everything or keyword in CLEANED_KEYWORDS
        if not wanted:
            out[tag] = item.get_item(tag)
            continue
        try:
            elem = item[tag]  # converted with the item's own character set
        except _UNREADABLE:
            vr = _dictionary_vr(tag)
            notes.append(Note(keyword or "(private)", "dropped: cannot be read"))
            if vr in _STRING_VRS:
                out.add(DataElement(tag, vr, None))
            continue
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", Sequence(
                [_clean_item(i, notes, True, codec) for i in (elem.value or [])])))
        elif elem.VR in _STRING_VRS:
            vr = elem.VR
            if keyword:
                values = _clean_values(elem.tag, vr, keyword, elem.value, notes, codec)
            else:  # a private attribute in an item: no VM to hold it to
                values = [v for v in (_clean_text(vr, "(private)", text, notes, codec)
                                      for text in _strings(elem.value)) if v is not None]
            out.add(_element(elem.tag, vr, values))
        else:
            out.add(elem)
    return out


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def clean_dataset(ds: Dataset) -> Cleaned:
    """A copy of ``ds`` whose :data:`CLEANED_KEYWORDS` are cleaned (see the module docstring),
    and the notes of what changed. ``ds`` itself is left as it was; the copy shares its other
    data elements. Cleaning a cleaned dataset changes nothing and notes nothing."""
    notes: list[Note] = []
    cleaned = [tag for tag in ds.keys() if keyword_for_tag(tag) in CLEANED_KEYWORDS
               and _dictionary_vr(tag) in _STRING_VRS | {"SQ"}]
    own = Dataset()  # the cleaned elements, decoded with ds's own character set
    if "SpecificCharacterSet" in ds:
        own.add(ds.get_item(tag_for_keyword("SpecificCharacterSet")))
    for tag in cleaned:
        own[tag] = ds.get_item(tag)
    charset = output_character_set(ds)
    own = _clean_item(own, notes, False, _measuring_codec(charset))
    copy = Dataset()
    for tag in ds.keys():
        copy[tag] = own.get_item(tag) if tag in cleaned else ds.get_item(tag)
    # the cleaned text is decoded; what the copy declares is what its outputs may (highdicom
    # copies it, and refuses some legal forms)
    if charset is None:
        if "SpecificCharacterSet" in copy:
            del copy.SpecificCharacterSet
    else:  # a new element: the copy shares ds's, which must not change
        copy.add(DataElement(_CHARSET_TAG, "CS", charset))
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    return Cleaned(copy, tuple(dict.fromkeys(notes)))


def _one(ds: Dataset, tag: int) -> Dataset:
    """A dataset of ``ds``'s element ``tag`` alone, decoded with ``ds``'s character set."""
    single = Dataset()
    if "SpecificCharacterSet" in ds:
        single.SpecificCharacterSet = ds.SpecificCharacterSet
    single.add(ds[tag])  # converted here, with the character set of the dataset it is in
    return single


def minimal_dataset(ds: Dataset) -> Dataset:
    """``ds`` without any of :data:`CLEANED_KEYWORDS` but its UIDs, the Type 2 patient and
    study attributes present and empty: what an output is built from when the cleaned headers
    still cannot be (the study is still reported; the PACS matches it by its UIDs)."""
    out = Dataset()
    for tag in ds.keys():
        if keyword_for_tag(tag) not in CLEANED_KEYWORDS or _dictionary_vr(tag) == "UI":
            out[tag] = ds.get_item(tag)
    modality = str(ds.get("Modality", "") or "")  # Type 1: highdicom reads it
    out.Modality = modality if _GRAMMAR["CS"].fullmatch(modality) and modality else "OT"
    for keyword in _TYPE2_KEYWORDS:
        out.add(DataElement(tag_for_keyword(keyword), dictionary_VR(tag_for_keyword(keyword)), None))
    if "SpecificCharacterSet" in out:  # nothing left to decode, and highdicom refuses some forms
        del out.SpecificCharacterSet
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out


def text_values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    """Every non-empty value of ``keyword`` in ``ds`` (one per DICOM value: an HL7 repetition
    each): control characters made spaces (runs of spaces one, but in a PN), a date, time or
    number that is not valid left out; not reduced to the VM nor cut to the VR's length (the
    HL7 builder cuts to its fields' lengths); () when absent."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return ()
    vr = dictionary_VR(tag)
    if vr not in _STRING_VRS:
        return tuple(s for s in _strings(ds[tag].value) if s)
    out = []
    for text in _strings(_one(ds, tag)[tag].value):
        stripped = strip_controls(text).strip(" \x00")
        if not stripped or (vr in _CHECKED_IN_TEXT and _value_problem(vr, "", stripped)):
            continue  # e.g. a date that is none: the message goes without it
        out.append(stripped if vr == "PN" else " ".join(stripped.split()))
    return tuple(out)


#: the VRs whose values :func:`text_values` checks (a code string is text there: an order's
#: priority in a term the standard does not know still counts, as the most urgent)
_CHECKED_IN_TEXT = frozenset({"AS", "DA", "DS", "DT", "IS", "TM"})


# ----------------------------------------------------------------------- character set

#: the terms highdicom accepts in Specific Character Set (its enumeration)
_HIGHDICOM_CHARSETS = frozenset(e.value for e in SpecificCharacterSetValues)
#: multi-byte code extensions, which may not come first in a multi-valued Specific Character Set
_MULTI_BYTE = frozenset({"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149",
                         "ISO 2022 IR 58"})
_DEFAULT = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_CHARSET_TAG = 0x00080005
UTF8 = "ISO_IR 192"


def output_character_set(ds: Dataset) -> str | list[str] | None:
    """The Specific Character Set an output made from ``ds`` declares when its text fits in it:
    ``ds``'s own, in the form highdicom takes (``\\ISO 2022 IR 87`` is ``ISO 2022 IR 6\\ISO
    2022 IR 87``); None for the default repertoire; ISO_IR 192 for one highdicom does not take
    (ISO 2022 IR 149, a term the standard does not know)."""
    values = [v.strip() for v in _strings(ds.get("SpecificCharacterSet"))]
    if all(v in _DEFAULT for v in values):
        return None
    if len(values) > 1 and values[0] == "":
        values[0] = "ISO 2022 IR 6"
    if not all(v in _HIGHDICOM_CHARSETS for v in values) or (
            len(values) > 1 and values[0] in _MULTI_BYTE):
        return UTF8
    return values if len(values) > 1 else values[0]


def _measuring_codec(charset: str | list[str] | None) -> str:
    """The Python codec whose bytes count a value's length in an output declaring ``charset``
    (UTF-8 when none: an output with non-ASCII text then declares ISO_IR 192)."""
    terms = [charset] if isinstance(charset, str) else list(charset or [])
    specific = [t for t in terms if t not in _DEFAULT]
    if not specific:
        return "utf-8"
    return python_encoding.get(specific[-1], "utf-8")


def _texts(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
        elif elem.VR in _STRING_VRS and elem.value not in (None, ""):
            yield from _strings(elem.value)


def _codecs(charset: str | list[str]) -> list[str]:
    terms = [charset] if isinstance(charset, str) else list(charset)
    return ["ascii" if t in _DEFAULT else python_encoding.get(t, "ascii") for t in terms]


def _encodable(text: str, codecs: list[str]) -> bool:
    """Whether every character of ``text`` is in one of ``codecs`` (what pydicom needs to
    encode it, switching between a code extension's character sets as it goes)."""
    for char in set(text):
        for codec in codecs:
            try:
                char.encode(codec)
            except UnicodeError:
                continue
            break
        else:
            return False
    return True


def declare_character_set(ds: Dataset, preferred: str | list[str] | None = None) -> Dataset:
    """Make ``ds`` (an output, built) declare the character set its text needs: none when it
    is all ASCII (whatever highdicom copied stays), ``preferred`` (:func:`output_character_set`
    of its source) when every character fits in it, so that a value keeps the length in bytes
    it had in the source; else ISO_IR 192 (UTF-8), which encodes every value. Returns ``ds``."""
    texts = [t for t in _texts(ds) if not t.isascii()]
    if not texts:
        return ds
    if preferred is not None and preferred != UTF8 and all(
            _encodable(t, _codecs(preferred)) for t in texts):
        ds.SpecificCharacterSet = preferred
    else:
        ds.SpecificCharacterSet = UTF8
    return ds


def notes_text(notes: Iterable[Note]) -> str:
    """The notes as one line: ``'PatientSex dropped: ...; PatientName had 2 values, ...'``."""
    return "; ".join(str(n) for n in notes)
