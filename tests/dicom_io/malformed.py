"""A corpus of malformed instances, each made from a valid synthetic radiograph by editing bytes.

Every entry is a data set as a sender would put it on the wire (the bytes after the File Meta
group), with the transfer syntax and the Affected SOP Class / Instance UIDs of its C-STORE
request. :meth:`Malformed.write` puts the File Meta group the receiver writes in front of it, so
``check_instance`` and ``read_header`` see exactly the file the receiver would keep.

The source is ``dicom_io.synthetic.make_instance`` (32 x 32, 16 bits allocated, 12 stored),
written by pydicom in explicit or implicit VR little endian, deflated, RLE Lossless (pydicom's
encoder) or JPEG 2000 Lossless (pylibjpeg-openjpeg), then broken by editing the bytes: pydicom
refuses to write most of these, and the point is the bytes a broken sender puts on the wire.

Each entry says what must refuse it: ``check`` (``dicom_io.validate.check_instance``, structure)
or ``header`` (``daemon.receiver.read_header``: UIDs and what the request says), the failure
status the receiver answers, and words the refusal's reason (the quarantine note) must contain.
Every entry has new UIDs, so each can be looked for in the database by its SOP Instance UID.
"""

from __future__ import annotations

import copy
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from dicom_io.synthetic import CR_IMAGE_STORAGE, DX_PRESENTATION_STORAGE, StudySpec, make_instance

CANNOT_UNDERSTAND = 0xC000
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900

CHECK = "check"
HEADER = "header"

#: The transfer syntaxes the corpus uses (the network tests propose CR in each).
TRANSFER_SYNTAXES = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEG2000Lossless,
    uid.JPEGLosslessSV1,
)

_PREAMBLE = b"\x00" * 128 + b"DICM"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
ITEM = b"\xfe\xff\x00\xe0"
ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Malformed:
    name: str
    dataset: bytes  #: the data set as sent: what follows the File Meta group
    transfer_syntax: str
    sop_class_uid: str  #: the C-STORE request's Affected SOP Class UID
    sop_instance_uid: str  #: the C-STORE request's Affected SOP Instance UID
    caught_by: str  #: CHECK or HEADER
    reason: tuple[str, ...]  #: words the refusal's reason contains
    status: int = CANNOT_UNDERSTAND
    #: False where pynetdicom cannot send the bytes as they are (see ``file_meta_in_data_set``)
    network: bool = True
    #: an offset in the data set the reason must name, as an offset in the file
    at: int | None = None

    def words(self, meta_length: int | None = None) -> tuple[str, ...]:
        """The words the reason must contain, in a file whose preamble and File Meta group take
        ``meta_length`` bytes (default: those of :meth:`file_meta`; the receiver's differ)."""
        if self.at is None:
            return self.reason
        if meta_length is None:
            meta_length = len(self.file_meta())
        return self.reason + (f"offset {meta_length + self.at}",)

    def file_meta(self) -> bytes:
        """The preamble and File Meta group, as the receiver writes them from the request."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class_uid
        meta.MediaStorageSOPInstanceUID = self.sop_instance_uid
        meta.TransferSyntaxUID = self.transfer_syntax
        meta.ImplementationClassUID = uid.PYDICOM_IMPLEMENTATION_UID
        buf = io.BytesIO()
        buf.write(_PREAMBLE)
        write_file_meta_info(buf, meta, enforce_standard=True)
        return buf.getvalue()

    def write(self, path: Path) -> Path:
        path.write_bytes(self.file_meta() + self.dataset)
        return path


# -- the valid sources ---------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A valid instance and its encoded data set."""

    ds: Dataset
    dataset: bytes
    transfer_syntax: str

    @property
    def sop_uid(self) -> str:
        return str(self.ds.SOPInstanceUID)

    def entry(self, name: str, dataset: bytes, caught_by: str, *reason: str,
              transfer_syntax: str | None = None, at: int | None = None,
              **kwargs: object) -> Malformed:
        """``at``: an offset in the data set the reason must name (as an offset in the file)."""
        return Malformed(name, dataset, transfer_syntax or self.transfer_syntax,
                         kwargs.pop("sop_class_uid", CR_IMAGE_STORAGE),  # type: ignore[arg-type]
                         kwargs.pop("sop_instance_uid", self.sop_uid),  # type: ignore[arg-type]
                         caught_by, reason, at=at, **kwargs)  # type: ignore[arg-type]


def instance(**changes: object) -> Dataset:
    """A new valid 32 x 32 CR (new UIDs each call); ``changes`` set attributes on it."""
    ds = make_instance(StudySpec(views=1, rows=32, columns=32), 0)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def part10(ds: Dataset, transfer_syntax: str = uid.ExplicitVRLittleEndian) -> bytes:
    """``ds`` written by pydicom as a Part 10 file in ``transfer_syntax`` (compressing if needed)."""
    ds = copy.deepcopy(ds)
    if transfer_syntax == uid.RLELossless:
        ds.compress(uid.RLELossless, generate_instance_uid=False)
    elif transfer_syntax == uid.JPEG2000Lossless:
        ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dataset_of(raw: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the preamble and the File Meta group."""
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack("<I", raw[140:144])  # (0002,0000) UL, explicit VR
    return raw[144 + group_length:]


def source(transfer_syntax: str = uid.ExplicitVRLittleEndian, **changes: object) -> Source:
    ds = instance(**changes)
    return Source(ds, dataset_of(part10(ds, transfer_syntax)), transfer_syntax)


# -- where things are in the bytes ---------------------------------------------------------


@dataclass(frozen=True)
class Element:
    tag: int
    offset: int  #: of the tag
    length_at: int  #: offset of the length field
    length_size: int  #: 2 or 4 bytes
    value_at: int
    length: int

    @property
    def end(self) -> int:
        return self.value_at + self.length


def elements(data: bytes, implicit: bool = False) -> dict[int, Element]:
    """The top-level elements of a little endian data set pydicom wrote (defined-length
    sequences; encapsulated Pixel Data last), by tag. Independent of dicom_io.validate."""
    out: dict[int, Element] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | elem
        vr = data[pos + 4:pos + 6]
        if implicit:
            length_at, size, value_at = pos + 4, 4, pos + 8
        elif vr in _LONG_VRS:
            length_at, size, value_at = pos + 8, 4, pos + 12
        else:
            length_at, size, value_at = pos + 6, 2, pos + 8
        (length,) = struct.unpack_from("<L" if size == 4 else "<H", data, length_at)
        out[tag] = Element(tag, pos, length_at, size, value_at, length)
        if length == UNDEFINED:
            break  # encapsulated Pixel Data: the last element
        pos = value_at + length
    return out


def fragments(data: bytes, pixel: Element) -> list[tuple[int, int]]:
    """(offset of the item tag, length) of the Basic Offset Table and each fragment."""
    items, pos = [], pixel.value_at
    while data[pos:pos + 4] == ITEM:
        (length,) = struct.unpack_from("<L", data, pos + 4)
        items.append((pos, length))
        pos += 8 + length
    assert data[pos:pos + 8] == SEQUENCE_DELIMITER
    return items


def set_length(data: bytes, el: Element, length: int) -> bytes:
    fmt = "<L" if el.length_size == 4 else "<H"
    return data[:el.length_at] + struct.pack(fmt, length) + data[el.length_at + el.length_size:]


def replace_value(data: bytes, el: Element, value: bytes) -> bytes:
    """``el``'s value replaced by ``value`` (same length: the rest of the bytes stay put)."""
    assert len(value) == el.length, (len(value), el.length)
    return data[:el.value_at] + value + data[el.end:]


def cut(data: bytes, at: int) -> bytes:
    return data[:at]


def _tag(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def explicit_element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    length = len(value) if length is None else length
    if vr in _LONG_VRS:
        return _tag(tag) + vr + b"\0\0" + struct.pack("<L", length) + value
    return _tag(tag) + vr + struct.pack("<H", length) + value


# -- the corpus ----------------------------------------------------------------------------

PIXEL_DATA, ROWS, COLUMNS = 0x7FE00010, 0x00280010, 0x00280011
MODALITY, MANUFACTURER, PHOTOMETRIC = 0x00080060, 0x00080070, 0x00280004
REGION_SEQUENCE, STUDY_UID, SERIES_UID = 0x00082218, 0x0020000D, 0x0020000E


def _truncations() -> Iterator[Malformed]:
    s = source()
    el = elements(s.dataset)
    yield s.entry("truncated_in_an_element_header", cut(s.dataset, el[STUDY_UID].offset + 4),
                  CHECK, "truncated", "element header", at=el[STUDY_UID].offset)
    s = source()
    el = elements(s.dataset)
    yield s.entry("truncated_in_a_value", cut(s.dataset, el[PHOTOMETRIC].value_at + 4), CHECK,
                  "(0028,0004)", "declares 12 bytes", "only 4")
    s = source()
    el = elements(s.dataset)
    yield s.entry("truncated_in_a_sequence_item", cut(s.dataset, el[REGION_SEQUENCE].value_at + 20),
                  CHECK, "(0008,2218)", "declares")
    s = source()
    el = elements(s.dataset)
    yield s.entry("truncated_in_pixel_data", cut(s.dataset, el[PIXEL_DATA].value_at + 1024),
                  CHECK, "(7FE0,0010)", "declares 2048 bytes", "only 1024")
    s = source()
    el = elements(s.dataset)
    yield s.entry("truncated_in_the_pixel_data_header", cut(s.dataset, el[PIXEL_DATA].offset + 10),
                  CHECK, "truncated", "(7FE0,0010)")
    s = source()
    yield s.entry("empty_data_set", b"", CHECK, "no Pixel Data")
    s = source(uid.JPEG2000Lossless)
    el = elements(s.dataset)
    (_, _), (frag_at, frag_length) = fragments(s.dataset, el[PIXEL_DATA])[:2]
    yield s.entry("truncated_in_a_fragment", cut(s.dataset, frag_at + 8 + frag_length // 2), CHECK,
                  "fragment 1", "declares")


def _vrs_and_lengths() -> Iterator[Malformed]:
    s = source()
    el = elements(s.dataset)
    at = el[MODALITY].offset + 4
    yield s.entry("bad_vr_letters", s.dataset[:at] + b"QQ" + s.dataset[at + 2:], CHECK,
                  "bad VR", "(0008,0060)")
    s = source()
    el = elements(s.dataset)
    at = el[MANUFACTURER].offset + 4
    yield s.entry("bad_vr_binary", s.dataset[:at] + b"\x01\x02" + s.dataset[at + 2:], CHECK,
                  "(0008,0070)", at=el[MANUFACTURER].offset)
    s = source()
    el = elements(s.dataset)
    at = el[MODALITY].offset + 4  # CS (16-bit length) said to be OB (reserved + 32-bit length)
    yield s.entry("vr_with_the_other_length_form", s.dataset[:at] + b"OB" + s.dataset[at + 2:],
                  CHECK, "(0008,0060)")
    s = source()
    el = elements(s.dataset)
    yield s.entry("odd_length", set_length(s.dataset, el[MANUFACTURER], el[MANUFACTURER].length + 1),
                  CHECK, "(0008,0070)", "odd length")
    s = source()
    el = elements(s.dataset)
    yield s.entry("length_longer_than_the_file", set_length(s.dataset, el[PHOTOMETRIC], 0xFFFE),
                  CHECK, "(0028,0004)", "declares 65534 bytes")
    s = source()
    el = elements(s.dataset)
    yield s.entry("length_two_bytes_short",
                  set_length(s.dataset, el[MANUFACTURER], el[MANUFACTURER].length - 2), CHECK,
                  "offset")
    s = source()
    el = elements(s.dataset)
    yield s.entry("huge_length_on_pixel_data", set_length(s.dataset, el[PIXEL_DATA], 0xFFFFFFF0),
                  CHECK, "(7FE0,0010)", "declares 4294967280 bytes")
    s = source()
    el = elements(s.dataset)
    yield s.entry("huge_length_on_a_sequence",
                  set_length(s.dataset, el[REGION_SEQUENCE], 0xFFFFFFF0), CHECK,
                  "(0008,2218)", "declares 4294967280 bytes")
    s = source()
    el = elements(s.dataset)
    item_length_at = el[REGION_SEQUENCE].value_at + 4
    yield s.entry("huge_length_on_an_item",
                  s.dataset[:item_length_at] + struct.pack("<L", 0xFFFFFFF0)
                  + s.dataset[item_length_at + 4:], CHECK, "item 1", "declares 4294967280 bytes")
    s = source(uid.ImplicitVRLittleEndian)
    el = elements(s.dataset, implicit=True)
    yield s.entry("huge_length_in_implicit_vr", set_length(s.dataset, el[MANUFACTURER], 0xFFFFFFF0),
                  CHECK, "(0008,0070)", "declares 4294967280 bytes")
    s = source(uid.ImplicitVRLittleEndian)
    el = elements(s.dataset, implicit=True)
    yield s.entry("undefined_length_on_a_string",
                  set_length(s.dataset, el[MANUFACTURER], UNDEFINED), CHECK,
                  "(0008,0070)", "undefined length")


def _undefined_sequence(s: Source) -> tuple[bytes, bytes, bytes, bytes]:
    """(before, sequence header, item content, after) of the Anatomic Region Sequence."""
    el = elements(s.dataset)
    seq = el[REGION_SEQUENCE]
    item_content = s.dataset[seq.value_at + 8:seq.end]
    header = _tag(REGION_SEQUENCE) + b"SQ\0\0" + struct.pack("<L", UNDEFINED)
    return s.dataset[:seq.offset], header, item_content, s.dataset[seq.end:]


def _structure() -> Iterator[Malformed]:
    s = source()
    before, header, content, after = _undefined_sequence(s)
    item = ITEM + struct.pack("<L", UNDEFINED) + content + ITEM_DELIMITER
    yield s.entry("sequence_never_closed", before + header + item + after, CHECK,
                  "sequence (0008,2218)", "an item (FFFE,E000) was expected")
    s = source()
    before, header, content, after = _undefined_sequence(s)
    yield s.entry("item_never_closed",
                  before + header + ITEM + struct.pack("<L", UNDEFINED) + content + after, CHECK,
                  "item 1 of sequence (0008,2218)", "never closed")
    s = source()
    before, header, content, after = _undefined_sequence(s)
    nested = b""
    for _ in range(5):  # five undefined-length sequences, one in the other, none closed
        nested += header + ITEM + struct.pack("<L", UNDEFINED)
    yield s.entry("nested_sequences_never_closed", before + nested + content + after, CHECK,
                  "never closed")
    s = source()
    before, header, content, after = _undefined_sequence(s)
    depth = 100
    opened = (header + ITEM + struct.pack("<L", UNDEFINED)) * depth
    closed = (ITEM_DELIMITER + SEQUENCE_DELIMITER) * depth
    yield s.entry("sequences_nested_too_deep", before + opened + content + closed + after, CHECK,
                  "nested", "deep")
    s = source()
    el = elements(s.dataset)
    at = el[ROWS].offset
    yield s.entry("item_delimiter_at_the_top_level", s.dataset[:at] + ITEM_DELIMITER + s.dataset[at:],
                  CHECK, "item delimiter (FFFE,E00D)", at=at)
    s = source()
    el = elements(s.dataset)
    rows, columns = el[ROWS], el[COLUMNS]
    swapped = (s.dataset[:rows.offset] + s.dataset[columns.offset:columns.end]
               + s.dataset[rows.offset:rows.end] + s.dataset[columns.end:])
    yield s.entry("tags_out_of_order", swapped, CHECK, "(0028,0010)", "after (0028,0011)")
    s = source()
    el = elements(s.dataset)
    modality = s.dataset[el[MODALITY].offset:el[MODALITY].end]
    yield s.entry("duplicate_element", s.dataset[:el[MODALITY].end] + modality
                  + s.dataset[el[MODALITY].end:], CHECK, "(0008,0060)", "duplicate")
    s = source()
    command = explicit_element(0x00000000, b"UL", struct.pack("<L", 0))
    yield s.entry("command_element_in_the_data_set", command + s.dataset, CHECK,
                  "command element (0000,0000)")
    s = source()
    raw = part10(s.ds)
    meta = raw[132:len(raw) - len(s.dataset)]
    # pynetdicom's split_dataset takes a data set's leading group 0002 for the file's own File
    # Meta, so no pynetdicom sender can put these bytes on the wire: checked on files only
    yield s.entry("file_meta_in_the_data_set", meta + s.dataset, CHECK, "File Meta element",
                  "inside the data set", network=False)
    s = source()
    yield s.entry("preamble_in_the_data_set", part10(s.ds), CHECK, "preamble", "Part 10 file",
                  at=0)


def _pixels() -> Iterator[Malformed]:
    ds = instance()
    del ds.PixelData
    s = Source(ds, dataset_of(part10(ds)), uid.ExplicitVRLittleEndian)
    yield s.entry("no_pixel_data", s.dataset, CHECK, "no Pixel Data (7FE0,0010)")
    s = source()
    el = elements(s.dataset)
    yield s.entry("empty_pixel_data", cut(s.dataset, el[PIXEL_DATA].length_at)
                  + struct.pack("<L", 0), CHECK, "no Pixel Data", "empty")
    s = source(Rows=64)
    yield s.entry("native_pixel_data_too_short", s.dataset, CHECK, "truncated pixel data",
                  "holds 2048 bytes", "Rows 64 x Columns 32", "need 4096")
    s = source(NumberOfFrames=4)
    yield s.entry("more_frames_than_the_data_holds", s.dataset, CHECK, "truncated pixel data",
                  "4 frame(s) need 8192")
    s = source(NumberOfFrames=2)
    el = elements(s.dataset)
    frames = 0x00280008
    yield s.entry("number_of_frames_not_a_number", replace_value(s.dataset, el[frames], b"#!"),
                  CHECK, "Number of Frames (0028,0008)", "not an integer")
    s = source(Rows=0)
    yield s.entry("rows_zero", s.dataset, CHECK, "Rows (0028,0010) is 0")
    s = source(BitsAllocated=12)
    yield s.entry("bits_allocated_12", s.dataset, CHECK, "Bits Allocated (0028,0100) is 12")
    s = source(SamplesPerPixel=0)
    yield s.entry("samples_per_pixel_zero", s.dataset, CHECK, "Samples per Pixel (0028,0002) is 0")
    s = source()
    el = elements(s.dataset)
    yield s.entry("pixel_data_without_rows",
                  s.dataset[:el[ROWS].offset] + s.dataset[el[ROWS].end:], CHECK,
                  "without Rows (0028,0010)")


def _encapsulated() -> Iterator[Malformed]:
    s = source(uid.JPEG2000Lossless)
    yield s.entry("encapsulated_pixel_data_in_a_native_syntax", s.dataset, CHECK,
                  "encapsulated", "native transfer syntax",
                  transfer_syntax=uid.ExplicitVRLittleEndian)
    s = source()
    yield s.entry("native_pixel_data_in_jpeg_2000", s.dataset, CHECK, "defined length",
                  "encapsulated", transfer_syntax=uid.JPEG2000Lossless)
    s = source(uid.JPEG2000Lossless)
    el = elements(s.dataset)
    _, (frag_at, frag_length) = fragments(s.dataset, el[PIXEL_DATA])[:2]
    garbage = bytes((i * 37 + 11) % 256 for i in range(frag_length))
    yield s.entry("jpeg_2000_garbage_fragment",
                  s.dataset[:frag_at + 8] + garbage + s.dataset[frag_at + 8 + frag_length:], CHECK,
                  "frame 1", "J2K codestream (FF4F FF51)", at=frag_at)
    s = source(uid.JPEG2000Lossless)
    yield s.entry("jpeg_fragment_without_soi", s.dataset, CHECK, "JPEG SOI marker (FFD8)",
                  "starts with FF4FFF51", transfer_syntax=uid.JPEGLosslessSV1)
    s = source(uid.JPEG2000Lossless)
    yield s.entry("encapsulated_pixel_data_never_closed", s.dataset[:-8], CHECK,
                  "never closed by a sequence delimiter")
    s = source(uid.JPEG2000Lossless)
    el = elements(s.dataset)
    _, (frag_at, _) = fragments(s.dataset, el[PIXEL_DATA])[:2]
    yield s.entry("fragment_longer_than_the_file",
                  s.dataset[:frag_at + 4] + struct.pack("<L", 0x7FFFFFF0) + s.dataset[frag_at + 8:],
                  CHECK, "fragment 1", "declares 2147483632 bytes")
    s = source(uid.JPEG2000Lossless)
    el = elements(s.dataset)
    _, (frag_at, _) = fragments(s.dataset, el[PIXEL_DATA])[:2]
    yield s.entry("fragment_with_a_bad_item_tag",
                  s.dataset[:frag_at] + b"\x10\x00\x10\x00" + s.dataset[frag_at + 4:], CHECK,
                  "(0010,0010)", "for fragment 1 was expected")
    s = source(uid.JPEG2000Lossless)
    el = elements(s.dataset)
    (bot_at, bot_length), *_ = fragments(s.dataset, el[PIXEL_DATA])
    yield s.entry("no_fragment", s.dataset[:bot_at + 8 + bot_length] + SEQUENCE_DELIMITER, CHECK,
                  "0 fragment(s) for 1 frame(s)")
    s = source(uid.JPEG2000Lossless)
    el = elements(s.dataset)
    (bot_at, bot_length), *_ = fragments(s.dataset, el[PIXEL_DATA])
    bot = ITEM + struct.pack("<LLL", 8, 0, 1000)
    yield s.entry("offset_table_of_two_frames",
                  s.dataset[:bot_at] + bot + s.dataset[bot_at + 8 + bot_length:], CHECK,
                  "Basic Offset Table", "not 4 per frame")
    for name, header, words in _rle_headers():
        s = source(uid.RLELossless)
        el = elements(s.dataset)
        _, (frag_at, _) = fragments(s.dataset, el[PIXEL_DATA])[:2]
        yield s.entry(name, s.dataset[:frag_at + 8] + header + s.dataset[frag_at + 8 + 64:], CHECK,
                      "RLE", *words)


def _rle_headers() -> Iterator[tuple[str, bytes, tuple[str, ...]]]:
    """RLE headers that lie; the 32 x 32 16-bit source needs two segments."""
    def header(count: int, *offsets: int) -> bytes:
        return struct.pack("<16L", count, *offsets, *([0] * (15 - len(offsets))))

    yield "rle_zero_segments", header(0), ("declares 0 segments",)
    yield "rle_sixteen_segments", header(16, 64, 600), ("declares 16 segments",)
    yield "rle_wrong_segment_count", header(3, 64, 300, 600), ("3 segment(s)", "need 2")
    yield "rle_first_segment_not_at_64", header(2, 80, 600), ("first RLE segment starts at 80",)
    yield "rle_offsets_decreasing", header(2, 64, 32), ("segment 2 starts at 32",)
    yield "rle_offset_past_the_fragment", header(2, 64, 0x10000), ("past the fragment",)


def _deflate() -> Iterator[Malformed]:
    s = source(uid.DeflatedExplicitVRLittleEndian)
    yield s.entry("deflate_stream_truncated", cut(s.dataset, len(s.dataset) // 2), CHECK,
                  "deflated data set is truncated")
    s = source()
    yield s.entry("not_deflated_in_a_deflate_context", s.dataset, CHECK, "does not inflate",
                  transfer_syntax=uid.DeflatedExplicitVRLittleEndian)
    s = source()
    el = elements(s.dataset)
    broken = cut(s.dataset, el[PIXEL_DATA].value_at + 100)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    yield s.entry("deflated_truncated_data_set", c.compress(broken) + c.flush(), CHECK,
                  "inflated data set", "(7FE0,0010)",
                  transfer_syntax=uid.DeflatedExplicitVRLittleEndian)


def _same_length(text: str, like: str) -> bytes:
    """``text`` cut or padded to the length of ``like``'s value (even, NUL padded)."""
    n = len(like) + len(like) % 2
    return text.encode("latin-1")[:n].ljust(n, b"\0")


def _uids_and_request() -> Iterator[Malformed]:
    s = source()
    el = elements(s.dataset)
    junk = _same_length("1.2.840.10008.junk\x01", str(s.ds.StudyInstanceUID))
    yield s.entry("study_uid_with_junk", replace_value(s.dataset, el[STUDY_UID], junk), HEADER,
                  "StudyInstanceUID", "not a valid UID")
    s = source()
    el = elements(s.dataset)
    traversal = _same_length("1.2/../../../etc/x", str(s.ds.SeriesInstanceUID))
    yield s.entry("series_uid_path_traversal", replace_value(s.dataset, el[SERIES_UID], traversal),
                  HEADER, "SeriesInstanceUID", "not a valid UID")
    s = source()
    yield s.entry("sop_uid_differs_from_the_request", s.dataset, HEADER,
                  "SOP Instance UID in the data set", "differs from the request",
                  sop_instance_uid=uid.generate_uid())
    s = source(SOPClassUID=DX_PRESENTATION_STORAGE)
    yield s.entry("sop_class_differs_from_the_request", s.dataset, HEADER,
                  "SOP Class UID in the data set", "differs from the request",
                  status=DATA_SET_DOES_NOT_MATCH_SOP_CLASS)


BUILDERS: tuple[Callable[[], Iterator[Malformed]], ...] = (
    _truncations, _vrs_and_lengths, _structure, _pixels, _encapsulated, _deflate,
    _uids_and_request,
)


def build() -> list[Malformed]:
    """The whole corpus, new UIDs each call; names are unique."""
    corpus = [entry for builder in BUILDERS for entry in builder()]
    names = [m.name for m in corpus]
    assert len(names) == len(set(names)), "duplicate corpus names"
    return corpus
