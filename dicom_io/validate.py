"""A cheap structural check of a whole received file, run by the Storage SCP before it stores it.

:func:`check_instance` walks the Part 10 file element by element without decoding any value it
does not need: it reads tags, VRs and lengths, seeks over values, and reads only a few header
values (Rows, Columns, Samples per Pixel, Bits Allocated, Number of Frames, Photometric
Interpretation) and the first bytes of each frame's first fragment. A 2048 x 2048 16-bit image
costs about 0.35 ms, native or compressed. A deflated data set is inflated as a stream
(:class:`dicom_io.deflate.InflatedStream`: never whole in memory, at most ``max_inflated``
bytes; some 0.5 s per 256 MB), once to learn its size, then walked. Offsets in messages are
byte offsets in the file (in the inflated data set for a deflated one). A message starts with
``truncated:`` when the file ends before what it declares (an element's value, an item, a
fragment, a delimiter). :func:`dicom_io.prepare.read_view` runs the same check on every view
before it is read for scoring (``radtriage score``, uploads, the daemon), so a file cut short is
reported as such, not as what pydicom's lenient reader makes of it.

Checked at receive time (each failure raises :class:`~dicom_io.errors.InvalidInstance` whose
message says what is wrong and where: tag, byte offset, expected and actual length; never a
value, so never patient data):

* the preamble's ``DICM`` prefix and the File Meta group (explicit VR little endian, group 0002
  only, a Transfer Syntax UID radtriage accepts, else
  :class:`~dicom_io.errors.UnsupportedInstance`);
* every data element of the data set and of every nested item: a complete header, a known
  explicit VR, an even length that fits in the file (and in its item or sequence), tags in
  ascending order with no duplicate, no File Meta or command element in the data set, undefined
  lengths only on sequences, items and encapsulated Pixel Data, every undefined-length sequence
  and item closed by its delimiter, nesting at most :data:`MAX_DEPTH` deep; a data set that
  starts with a preamble and ``DICM`` (a file sent as a data set) is refused;
* Pixel Data present (for an image), with sane Rows, Columns, Samples per Pixel, Bits
  Allocated and Number of Frames;
* native (uncompressed) Pixel Data at least Rows x Columns x Samples per Pixel x bytes per
  sample x frames long (bit-packed for Bits Allocated 1, two samples per pixel for
  YBR_FULL_422);
* encapsulated Pixel Data: the Basic Offset Table and the fragments parse as items of even,
  defined length ending with a sequence delimiter, there is at least one fragment per frame,
  a non-empty offset table has one entry per frame pointing at a fragment, and the first
  fragment of each frame starts with the marker of its transfer syntax: ``FFD8 FF`` (SOI) for
  the JPEG processes and JPEG-LS, the J2K codestream's ``FF4F FF51`` (SOC, SIZ) or a JP2
  signature box for JPEG 2000 and HTJ2K, and for RLE Lossless a 64-byte header with 1..15
  segments, the first at offset 64, increasing offsets inside the fragment and as many
  segments as Samples per Pixel x bytes per sample;
* a deflated data set inflates completely (no truncated deflate stream, nothing after it but
  a pad byte or a gzip trailer) to at most ``max_inflated`` bytes
  (:class:`~dicom_io.errors.InstanceTooLarge`: the receiver passes ``limits.max_instance_mb``),
  and the inflated data set passes the checks above;
* a deflated image of more than ``max_pixels`` Rows x Columns x frames (the receiver passes
  ``limits.max_pixels``) is refused from its header, before anything else is inflated
  (:class:`~dicom_io.errors.InstanceTooLarge`): its pixels cost nothing on the wire, so the
  door is where their size is bounded. An uncompressed or encapsulated image over the limit
  is stored (its bytes were paid for on the wire) and reported "not analysed".

Not checked here, found only when the view is decoded for scoring (the study is then reported
with that view "not analysed" and the decoder's reason): corruption behind valid markers, that
is broken entropy-coded data, a codestream cut short after its first bytes, a codestream whose
size or bit depth contradicts the header, Bits Stored or High Bit inconsistent with Bits
Allocated, photometric interpretations the pixel path does not support, and ``limits.max_pixels``
for any image that is not deflated.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import uid
from pydicom.datadict import dictionary_VR

from dicom_io.codecs import CANDIDATES
from dicom_io.deflate import InflatedStream
from dicom_io.errors import InstanceTooLarge, InvalidInstance, UnsupportedInstance

#: Sequences nested deeper than this are refused (radiographs nest three or four levels).
MAX_DEPTH = 32

#: A deflated data set may inflate to at most this many bytes (512 MiB) unless the caller says
#: otherwise (the receiver: ``limits.max_instance_mb``).
MAX_INFLATED = 512 * 1024 * 1024

#: Number of Frames above this is refused: no radiograph has as many.
MAX_FRAMES = 10_000

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)

_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)
#: VRs whose explicit VR header has two reserved bytes and a 32-bit length (PS3.5 7.1.2)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())

#: Top-level elements whose value is read (all short): the image pixel description
_ROWS, _COLUMNS, _SAMPLES, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280002, 0x00280100
_FRAMES, _PHOTOMETRIC = 0x00280008, 0x00280004
_WANTED = frozenset({_ROWS, _COLUMNS, _SAMPLES, _BITS_ALLOCATED, _FRAMES, _PHOTOMETRIC})

_JPEG = "JPEG"
_J2K = "J2K"
_RLE = "RLE"
_NATIVE = "native"


@dataclass(frozen=True)
class _Syntax:
    implicit: bool
    little: bool
    deflated: bool
    family: str  #: ``_NATIVE`` or the family of the encapsulated codestream


#: Every transfer syntax the receiver may accept (dicom_io.codecs.CANDIDATES) and how to check it.
SYNTAXES: dict[str, _Syntax] = {
    uid.ExplicitVRLittleEndian: _Syntax(False, True, False, _NATIVE),
    uid.ImplicitVRLittleEndian: _Syntax(True, True, False, _NATIVE),
    uid.DeflatedExplicitVRLittleEndian: _Syntax(False, True, True, _NATIVE),
    uid.ExplicitVRBigEndian: _Syntax(False, False, False, _NATIVE),
    uid.RLELossless: _Syntax(False, True, False, _RLE),
    uid.JPEGBaseline8Bit: _Syntax(False, True, False, _JPEG),
    uid.JPEGExtended12Bit: _Syntax(False, True, False, _JPEG),
    uid.JPEGLossless: _Syntax(False, True, False, _JPEG),
    uid.JPEGLosslessSV1: _Syntax(False, True, False, _JPEG),
    uid.JPEGLSLossless: _Syntax(False, True, False, _JPEG),
    uid.JPEGLSNearLossless: _Syntax(False, True, False, _JPEG),
    uid.JPEG2000Lossless: _Syntax(False, True, False, _J2K),
    uid.JPEG2000: _Syntax(False, True, False, _J2K),
    uid.HTJ2KLossless: _Syntax(False, True, False, _J2K),
    uid.HTJ2KLosslessRPCL: _Syntax(False, True, False, _J2K),
    uid.HTJ2K: _Syntax(False, True, False, _J2K),
}
assert set(CANDIDATES) <= set(SYNTAXES), "a transfer syntax the receiver accepts has no check"

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_CODESTREAM = b"\xff\x4f\xff\x51"


def tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass
class _Pixels:
    """Where Pixel Data was found and how it is encoded."""

    tag_offset: int
    value_offset: int
    length: int  #: UNDEFINED when encapsulated
    vr: bytes | None


@dataclass
class _Walk:
    values: dict[int, bytes] = field(default_factory=dict)
    pixels: _Pixels | None = None
    float_pixels: bool = False


class _Reader:
    """Bounds-checked reads of one stream; ``where`` names it in messages."""

    def __init__(self, fp: BinaryIO, size: int, where: str) -> None:
        self.fp, self.size, self.where = fp, size, where

    def tell(self) -> int:
        return self.fp.tell()

    def seek(self, pos: int) -> None:
        self.fp.seek(pos)

    def read(self, n: int, what: str) -> bytes:
        pos = self.fp.tell()
        if pos + n > self.size:
            raise InvalidInstance(f"truncated: {what} at offset {pos} needs {n} bytes, only "
                                  f"{self.size - pos} left {self.where} (size {self.size})")
        data = self.fp.read(n)
        if len(data) < n:  # a stream whose size is not known yet (:func:`_check_pixel_count`)
            raise InvalidInstance(f"truncated: {what} at offset {pos} needs {n} bytes, only "
                                  f"{len(data)} left {self.where}")
        return data


class _Walker:
    def __init__(self, reader: _Reader, syntax: _Syntax, *, header_only: bool = False) -> None:
        self.r = reader
        self.syntax = syntax
        #: stop at the top-level Pixel Data (its header read, not its value)
        self.header_only = header_only
        e = "<" if syntax.little else ">"
        self._tag = struct.Struct(f"{e}HH")
        self._tag_len = struct.Struct(f"{e}HHL")  # implicit VR header; also items
        self._explicit = struct.Struct(f"{e}HH2sH")
        self._long = struct.Struct(f"{e}L")
        self._u16 = struct.Struct(f"{e}H")
        self.walk = _Walk()

    # -- element headers -------------------------------------------------------------------

    def _header(self, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, explicit VR or None, length, offset of the tag) of the next element.

        Like pydicom, an element whose VR bytes are no letters is read as implicit VR (some
        writers switch to implicit VR inside sequences); letters that name no VR are refused.
        """
        pos = self.r.tell()
        raw = self.r.read(8, "an element header")
        group, elem, length = self._tag_len.unpack(raw)
        tag = group << 16 | elem
        if implicit or group == 0xFFFE:
            return tag, None, length, pos
        _, _, vr, short_length = self._explicit.unpack(raw)
        if not _looks_explicit(vr):
            return tag, None, length, pos
        if vr not in _EXPLICIT_VRS:
            raise InvalidInstance(f"bad VR {vr!r} for {tag_str(tag)} at offset {pos}: not a "
                                  "DICOM value representation")
        if vr in _LONG_VRS:
            (length,) = self._long.unpack(self.r.read(4, f"the length of {tag_str(tag)}"))
            return tag, vr, length, pos
        return tag, vr, short_length, pos

    def _found_implicit(self) -> bool | None:
        """Whether the next element is implicit VR (None: too few bytes left to tell)."""
        pos = self.r.tell()
        if pos + 6 > self.r.size:
            return None
        raw = self.r.read(6, "an element header")
        self.r.seek(pos)
        return not _looks_explicit(raw[4:6])

    def _is_sequence(self, tag: int, vr: bytes | None, length: int) -> bool:
        if vr == b"SQ":
            return True
        if vr is not None and vr != b"UN":
            return False
        if length != UNDEFINED:
            if vr is not None:  # a defined-length UN: bytes, as pydicom reads it
                return False
            try:  # implicit VR: the data dictionary says
                return dictionary_VR(tag) == "SQ"
            except KeyError:  # a private or unknown tag: its value is kept as bytes
                return False
        # undefined length, implicit VR or UN: a sequence if the next thing is an item
        if tag == PIXEL_DATA:
            return False
        pos = self.r.tell()
        if pos + 4 > self.r.size:
            return False
        group, elem = self._tag.unpack(self.r.read(4, "an item tag"))
        self.r.seek(pos)
        return (group << 16 | elem) == ITEM

    # -- data sets and sequences -----------------------------------------------------------

    def dataset(self, end: int | None, depth: int, top: bool, owner: str, implicit: bool) -> None:
        """Walk the elements up to ``end`` (a defined-length item), to an item delimiter
        (``end is None`` and not ``top``), or to the end of the stream (``top``).

        As pydicom reads them: the first element decides whether the data set is implicit VR
        (an item may be implicit VR in an explicit VR data set, PS3.5 6.2.2; a top-level data
        set that contradicts its transfer syntax is read as what it is).
        """
        r = self.r
        last = -1
        found = self._found_implicit()
        if found is not None and (top or not implicit):
            implicit = found
        while True:
            pos = r.tell()
            if end is not None and pos == end:
                return
            if top and pos == r.size:
                return
            if not top and end is None and pos == r.size:
                raise InvalidInstance(f"truncated: {owner} of undefined length is never closed by "
                                      f"an item delimiter (FFFE,E00D): the {self._stream()} ends at {pos}")
            tag, vr, length, pos = self._header(implicit)
            if top and self.header_only and (tag == PIXEL_DATA or tag in FLOAT_PIXEL_DATA):
                return
            if tag == ITEM_DELIMITER:
                if top or end is not None:
                    raise InvalidInstance(f"item delimiter (FFFE,E00D) at offset {pos} outside "
                                          "an item of undefined length")
                if length != 0:
                    raise InvalidInstance(f"item delimiter (FFFE,E00D) at offset {pos} has "
                                          f"length {length}, not 0")
                return
            if tag >> 16 == 0xFFFE:
                raise InvalidInstance(f"{tag_str(tag)} at offset {pos}: an item or delimiter "
                                      f"where a data element was expected, in {owner}")
            if tag <= last:
                what = "a duplicate of" if tag == last else "after"
                raise InvalidInstance(f"{tag_str(tag)} at offset {pos} is {what} {tag_str(last)}: "
                                      f"tags must ascend in {owner}")
            last = tag
            group = tag >> 16
            if group == 0x0002 and top:
                raise InvalidInstance(f"File Meta element {tag_str(tag)} at offset {pos} inside "
                                      "the data set (the File Meta group belongs before it)")
            if group == 0x0000:
                raise InvalidInstance(f"command element {tag_str(tag)} at offset {pos} inside "
                                      "the data set")
            value_at = r.tell()
            if length == UNDEFINED:
                if self._is_sequence(tag, vr, length):
                    # the items of an undefined-length UN are implicit VR (PS3.5 6.2.2)
                    self.sequence(tag, None, depth + 1, implicit or vr == b"UN")
                elif tag == PIXEL_DATA and vr in (None, b"OB", b"OW", b"UN"):
                    if top:  # (an icon image in a sequence may be encapsulated too)
                        self.walk.pixels = _Pixels(pos, value_at, UNDEFINED, vr)
                    self.fragments()
                else:
                    raise InvalidInstance(f"{tag_str(tag)} at offset {pos} has an undefined "
                                          f"length, allowed only for sequences and encapsulated "
                                          f"Pixel Data (VR {(vr or b'implicit').decode()})")
                continue
            if length % 2:
                raise InvalidInstance(f"{tag_str(tag)} at offset {pos} has the odd length "
                                      f"{length} (PS3.5 7.1.1: values have an even length)")
            limit = r.size if end is None else end
            if value_at + length > limit:
                inside = f"the {self._stream()}" if end is None else owner
                raise InvalidInstance(f"{_cut(limit, r.size)}{tag_str(tag)} at offset {pos} declares "
                                      f"{length} bytes but only {max(0, limit - value_at)} are left in "
                                      f"{inside} (ends at {limit})")
            if self._is_sequence(tag, vr, length):
                self.sequence(tag, value_at + length, depth + 1, implicit)
                r.seek(value_at + length)
                continue
            if top:
                if tag == PIXEL_DATA:
                    self.walk.pixels = _Pixels(pos, value_at, length, vr)
                elif tag in FLOAT_PIXEL_DATA:
                    self.walk.float_pixels = True
                elif tag in _WANTED and length <= 64:
                    self.walk.values[tag] = r.read(length, f"the value of {tag_str(tag)}")
            r.seek(value_at + length)

    def sequence(self, tag: int, end: int | None, depth: int, implicit: bool) -> None:
        r = self.r
        start = r.tell()
        name = f"sequence {tag_str(tag)} (value at offset {start})"
        if depth > MAX_DEPTH:
            raise InvalidInstance(f"{name} is nested {depth} deep, more than {MAX_DEPTH}")
        number = 0
        while True:
            pos = r.tell()
            if end is not None and pos == end:
                return
            if end is not None and pos > end:
                raise InvalidInstance(f"item {number} of {name} runs to offset {pos}, past the "
                                      f"end of the sequence ({end})")
            if end is None and pos == r.size:
                raise InvalidInstance(f"truncated: {name} of undefined length is never closed by a sequence "
                                      f"delimiter (FFFE,E0DD): the {self._stream()} ends at {pos}")
            limit = r.size if end is None else end
            if pos + 8 > limit:
                raise InvalidInstance(f"truncated: item header at offset {pos} in {name} needs 8 "
                                      f"bytes, only {limit - pos} left")
            group, elem, length = self._tag_len.unpack(r.read(8, "an item header"))
            item = group << 16 | elem
            if item == SEQUENCE_DELIMITER:
                if end is not None:
                    raise InvalidInstance(f"sequence delimiter at offset {pos} in {name}, which "
                                          "has a defined length")
                if length != 0:
                    raise InvalidInstance(f"sequence delimiter at offset {pos} in {name} has "
                                          f"length {length}, not 0")
                return
            if item != ITEM:
                raise InvalidInstance(f"{tag_str(item)} at offset {pos} in {name}: an item "
                                      "(FFFE,E000) was expected")
            number += 1
            owner = f"item {number} of {name}"
            if length == UNDEFINED:
                self.dataset(None, depth, False, owner, implicit)
                continue
            if pos + 8 + length > limit:
                raise InvalidInstance(f"{_cut(limit, r.size)}{owner} at offset {pos} declares {length} "
                                      f"bytes but only {limit - pos - 8} are left (ends at {limit})")
            self.dataset(pos + 8 + length, depth, False, owner, implicit)

    def fragments(self) -> list[tuple[int, int]]:
        """(offset of the item tag, value length) of each item of encapsulated Pixel Data,
        the Basic Offset Table first; leaves the stream after the sequence delimiter."""
        r = self.r
        items: list[tuple[int, int]] = []
        while True:
            pos = r.tell()
            if pos == r.size:
                raise InvalidInstance(f"truncated: encapsulated Pixel Data (7FE0,0010) is never closed by a "
                                      f"sequence delimiter: the {self._stream()} ends at {pos} "
                                      f"after {len(items)} item(s)")
            if pos + 8 > r.size:
                raise InvalidInstance(f"truncated: item header of Pixel Data at offset {pos} needs "
                                      f"8 bytes, only {r.size - pos} left")
            group, elem, length = self._tag_len.unpack(r.read(8, "an item header"))
            tag = group << 16 | elem
            if tag == SEQUENCE_DELIMITER:
                if length != 0:
                    raise InvalidInstance(f"Pixel Data sequence delimiter at offset {pos} has "
                                          f"length {length}, not 0")
                return items
            what = "the Basic Offset Table" if not items else f"fragment {len(items)}"
            if tag != ITEM:
                raise InvalidInstance(f"{tag_str(tag)} at offset {pos} in encapsulated Pixel Data "
                                      f"(7FE0,0010): an item (FFFE,E000) for {what} was expected")
            if length == UNDEFINED:
                raise InvalidInstance(f"{what} of Pixel Data at offset {pos} has an undefined "
                                      "length")
            if length % 2:
                raise InvalidInstance(f"{what} of Pixel Data at offset {pos} has the odd length "
                                      f"{length}")
            if pos + 8 + length > r.size:
                raise InvalidInstance(f"truncated: {what} of Pixel Data at offset {pos} declares {length} "
                                      f"bytes but only {r.size - pos - 8} are left in the "
                                      f"{self._stream()}")
            items.append((pos, length))
            r.seek(pos + 8 + length)

    def _stream(self) -> str:
        return "inflated data set" if self.syntax.deflated else "file"

    def us(self, tag: int, what: str) -> int | None:
        raw = self.walk.values.get(tag)
        if raw is None or len(raw) == 0:
            return None
        if len(raw) != 2:
            raise InvalidInstance(f"{what} {tag_str(tag)} has {len(raw)} bytes, not 2 (VR US)")
        return int(self._u16.unpack(raw)[0])


def _cut(limit: int, size: int) -> str:
    """``"truncated: "`` when what overruns ``limit`` overruns the end of the file (or inflated
    data set) itself, not only its item or sequence."""
    return "truncated: " if limit == size else ""


def _looks_explicit(vr: bytes) -> bool:
    """Two capital letters: pydicom's test for an explicit VR."""
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("ascii", errors="replace").strip(" \x00")


# -- the File Meta group -------------------------------------------------------------------


def _file_meta(r: _Reader) -> tuple[str, int]:
    """The Transfer Syntax UID and the offset where the data set starts."""
    head = r.read(132, "the preamble and DICM prefix")
    if head[128:132] != b"DICM":
        raise InvalidInstance("no 'DICM' prefix at offset 128: not a DICOM Part 10 file")
    meta = _Walker(r, _Syntax(False, True, False, _NATIVE))
    ts: str | None = None
    meta_end: int | None = None
    last = -1
    while True:
        pos = r.tell()
        if meta_end is not None and pos >= meta_end:
            if pos > meta_end:
                raise InvalidInstance(f"the File Meta group runs to offset {pos}, past the end "
                                      f"({meta_end}) its group length (0002,0000) gives")
            break
        if pos + 8 > r.size:
            break
        (group,) = struct.unpack("<H", r.read(2, "a File Meta tag"))
        r.seek(pos)
        if group != 0x0002:
            if meta_end is not None:
                raise InvalidInstance(f"element of group {group:04X} at offset {pos} inside the "
                                      f"File Meta group (its group length says it ends at "
                                      f"{meta_end})")
            break
        tag, vr, length, pos = meta._header(False)
        if tag <= last:
            raise InvalidInstance(f"File Meta element {tag_str(tag)} at offset {pos} is not "
                                  f"after {tag_str(last)}")
        last = tag
        if length == UNDEFINED or pos + length > r.size:
            raise InvalidInstance(f"{'truncated: ' if length != UNDEFINED else ''}File Meta element "
                                  f"{tag_str(tag)} at offset {pos} declares {length} bytes, more than "
                                  "the file holds")
        value = r.read(length, f"the value of {tag_str(tag)}")
        if tag == 0x00020000:
            if length != 4:
                raise InvalidInstance(f"File Meta group length (0002,0000) has {length} bytes")
            meta_end = r.tell() + struct.unpack("<L", value)[0]
            if meta_end > r.size:
                raise InvalidInstance(f"truncated: File Meta group length (0002,0000) says the group ends "
                                      f"at {meta_end}, past the end of the file ({r.size})")
        elif tag == 0x00020010:
            ts = _text(value)
    if not ts:
        raise InvalidInstance("no Transfer Syntax UID (0002,0010) in the File Meta group")
    return ts, r.tell()


# -- pixel data ----------------------------------------------------------------------------


def _check_pixels(w: _Walker, syntax: _Syntax, require_pixels: bool, ts: str) -> None:
    px = w.walk.pixels
    if px is None or (px.length == 0):
        if w.walk.float_pixels:
            return
        if require_pixels:
            where = "" if px is None else f" (the element at offset {px.tag_offset} is empty)"
            raise InvalidInstance(f"no Pixel Data (7FE0,0010) in an image{where}")
        return
    rows = w.us(_ROWS, "Rows")
    columns = w.us(_COLUMNS, "Columns")
    samples = w.us(_SAMPLES, "Samples per Pixel")
    bits = w.us(_BITS_ALLOCATED, "Bits Allocated")
    for name, value, tag in (("Rows", rows, _ROWS), ("Columns", columns, _COLUMNS),
                             ("Bits Allocated", bits, _BITS_ALLOCATED)):
        if value is None:
            raise InvalidInstance(f"Pixel Data without {name} {tag_str(tag)}")
        if value == 0:
            raise InvalidInstance(f"{name} {tag_str(tag)} is 0")
    assert rows is not None and columns is not None and bits is not None
    if samples is None:
        samples = 1
    if not 1 <= samples <= 4:
        raise InvalidInstance(f"Samples per Pixel (0028,0002) is {samples}, not 1 to 4")
    if bits != 1 and (bits % 8 or bits > 64):
        raise InvalidInstance(f"Bits Allocated (0028,0100) is {bits}, not 1 or a multiple of 8 "
                              "up to 64")
    frames = _frames(w)
    at = f"Pixel Data (7FE0,0010) at offset {px.tag_offset}"
    if syntax.family == _NATIVE:
        if px.length == UNDEFINED:
            raise InvalidInstance(f"{at} is encapsulated (undefined length) in the native "
                                  f"transfer syntax {uid.UID(ts).name}")
        if px.vr not in (None, b"OB", b"OW", b"UN"):
            raise InvalidInstance(f"{at} has VR {px.vr.decode()}, not OB or OW")
        per_frame = rows * columns * samples
        photometric = _text(w.walk.values.get(_PHOTOMETRIC))
        if photometric == "YBR_FULL_422" and samples == 3:
            per_frame = rows * columns * 2
        nbytes = bits // 8
        need = (per_frame * frames + 7) // 8 if bits == 1 else per_frame * nbytes * frames
        if px.length < need:
            layout = (f"Rows {rows} x Columns {columns} x Samples per Pixel {samples} x "
                      f"{'1 bit' if bits == 1 else f'{nbytes} byte(s)'} x {frames} frame(s)")
            raise InvalidInstance(f"truncated pixel data: native {at} holds {px.length} bytes, "
                                  f"{layout} need {need}")
        return
    if px.length != UNDEFINED:
        raise InvalidInstance(f"{at} has a defined length ({px.length}) but the transfer syntax "
                              f"{uid.UID(ts).name} needs encapsulated (undefined length) data")
    w.r.seek(px.value_offset)
    items = w.fragments()
    if not items:
        raise InvalidInstance(f"encapsulated {at} has no Basic Offset Table item")
    (bot_at, bot_length), fragments = items[0], items[1:]
    if len(fragments) < frames:
        raise InvalidInstance(f"encapsulated {at} has {len(fragments)} fragment(s) for "
                              f"{frames} frame(s): each frame needs at least one")
    starts = _frame_starts(w, bot_at, bot_length, fragments, frames)
    for frame, index in enumerate(starts, 1):
        frag_at, frag_length = fragments[index]
        w.r.seek(frag_at + 8)
        head = w.r.read(min(frag_length, 64), "the start of a fragment")
        where = f"frame {frame} (fragment {index + 1} at offset {frag_at})"
        _check_marker(syntax.family, head, frag_length, where, ts, samples, bits)


def _frames(w: _Walker) -> int:
    """Number of Frames (1 when absent)."""
    frames_text = _text(w.walk.values.get(_FRAMES))
    if not frames_text:
        return 1
    try:
        frames = int(frames_text)
    except ValueError:
        raise InvalidInstance(f"Number of Frames (0028,0008) is not an integer "
                              f"({len(frames_text)} characters)") from None
    if not 1 <= frames <= MAX_FRAMES:
        raise InvalidInstance(f"Number of Frames (0028,0008) is {frames}, not 1 to {MAX_FRAMES}")
    return frames


def _frame_starts(w: _Walker, bot_at: int, bot_length: int, fragments: list[tuple[int, int]],
                  frames: int) -> list[int]:
    """Index in ``fragments`` of the first fragment of each frame that can be located."""
    if bot_length:
        if bot_length % 4 or bot_length // 4 != frames:
            raise InvalidInstance(f"the Basic Offset Table at offset {bot_at} has {bot_length} "
                                  f"bytes, not 4 per frame for {frames} frame(s)")
        w.r.seek(bot_at + 8)
        e = "<" if w.syntax.little else ">"
        offsets = struct.unpack(f"{e}{frames}L", w.r.read(bot_length, "the Basic Offset Table"))
        first = fragments[0][0]
        index_of = {at - first: i for i, (at, _) in enumerate(fragments)}
        starts = []
        for n, offset in enumerate(offsets, 1):
            if offset not in index_of:
                raise InvalidInstance(f"Basic Offset Table entry {n} ({offset}) at offset "
                                      f"{bot_at} does not point at a fragment")
            starts.append(index_of[offset])
        return starts
    if len(fragments) == frames:
        return list(range(frames))
    return [0]  # several frames over more fragments, no offset table: only the first is known


def _check_marker(family: str, head: bytes, length: int, where: str, ts: str, samples: int,
                  bits: int) -> None:
    name = uid.UID(ts).name
    if family == _JPEG:
        if head[:3] != b"\xff\xd8\xff":
            raise InvalidInstance(f"{where} does not start with a JPEG SOI marker (FFD8), which "
                                  f"{name} needs; it starts with {head[:4].hex().upper() or 'nothing'}")
    elif family == _J2K:
        if head[:4] != _J2K_CODESTREAM and head[:12] != _JP2_SIGNATURE:
            raise InvalidInstance(f"{where} starts neither with a J2K codestream (FF4F FF51) nor "
                                  f"with a JP2 signature box, which {name} needs; it starts with "
                                  f"{head[:4].hex().upper() or 'nothing'}")
    elif family == _RLE:
        if length < 64:
            raise InvalidInstance(f"{where} has {length} bytes, less than the 64-byte RLE header")
        count, *offsets = struct.unpack("<16L", head[:64])
        if not 1 <= count <= 15:
            raise InvalidInstance(f"{where}: the RLE header declares {count} segments, not 1 to 15")
        need = samples * max(1, bits // 8)
        if count != need:
            raise InvalidInstance(f"{where}: the RLE header declares {count} segment(s); Samples "
                                  f"per Pixel {samples} x {max(1, bits // 8)} byte(s) need {need}")
        used = offsets[:count]
        if used[0] != 64:
            raise InvalidInstance(f"{where}: the first RLE segment starts at {used[0]}, not 64")
        for n in range(1, count):
            if used[n] <= used[n - 1]:
                raise InvalidInstance(f"{where}: RLE segment {n + 1} starts at {used[n]}, not "
                                      f"after segment {n} ({used[n - 1]})")
        if used[-1] >= length:
            raise InvalidInstance(f"{where}: RLE segment {count} starts at {used[-1]}, past the "
                                  f"fragment's {length} bytes")


# -- the check -----------------------------------------------------------------------------


def check_instance(path: Path, *, require_pixels: bool = True, max_inflated: int | None = MAX_INFLATED,
                   max_pixels: int | None = None, pixels: bool = True) -> None:
    """Raise InvalidInstance if the Part 10 file at ``path`` is structurally broken; its message
    starts with ``truncated:`` where the file (or inflated data set) ends before what it declares.

    ``require_pixels``: the file is an image and must carry Pixel Data (the receiver accepts
    images only). Raises UnsupportedInstance for a transfer syntax radtriage does not accept,
    and InstanceTooLarge for a deflated data set that inflates to more than ``max_inflated``
    bytes (None: no limit) or a deflated image of more than ``max_pixels`` pixels (None: no
    pixel limit). ``pixels`` False: the structure only (elements, items, fragments, the deflate
    stream), not the pixel description (Rows, Columns, lengths, the codestreams' markers), which
    :func:`dicom_io.pixels.check_header` then judges as it decodes.
    """
    with Path(path).open("rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        r = _Reader(fp, size, "in the file")
        ts, start = _file_meta(r)
        syntax = SYNTAXES.get(ts)
        if syntax is None:
            raise UnsupportedInstance(f"transfer syntax {ts[:64]!r} is not one radtriage accepts")
        if not syntax.deflated:
            r.seek(start)
            _check_data_set(r, syntax, require_pixels, ts, pixels)
            return
    with InflatedStream(path, start, limit=max_inflated) as stream:
        if max_pixels is not None:
            _check_pixel_count(stream, syntax, max_pixels)
        inflated = _Reader(stream, stream.size(), "in the inflated data set")
        inflated.seek(0)
        _check_data_set(inflated, syntax, require_pixels, ts, pixels)


def _check_data_set(r: _Reader, syntax: _Syntax, require_pixels: bool, ts: str,
                    pixels: bool = True) -> None:
    """Walk the data set from the reader's position to its end, then check its pixels."""
    at = r.tell()
    if r.size - at >= 132 and r.read(132, "the start of the data set")[128:] == b"DICM":
        raise InvalidInstance(f"the data set at offset {at} starts with a preamble and "
                              "'DICM': the sender sent a Part 10 file, not a data set")
    r.seek(at)
    walker = _Walker(r, syntax)
    walker.dataset(None, 0, True, "the data set", syntax.implicit)
    if pixels:
        _check_pixels(walker, syntax, require_pixels, ts)


def _check_pixel_count(stream: InflatedStream, syntax: _Syntax, max_pixels: int) -> None:
    """Refuse a deflated image of more than ``max_pixels`` from its header, inflating only the
    elements before its Pixel Data. The full walk that follows checks everything, this header
    included, against the inflated data set's true size."""
    walker = _Walker(_Reader(stream, 1 << 62, "in the inflated data set"), syntax, header_only=True)
    try:
        walker.dataset(None, 0, True, "the data set", syntax.implicit)
        rows, columns = walker.us(_ROWS, "Rows"), walker.us(_COLUMNS, "Columns")
        frames = _frames(walker)
    except InvalidInstance:
        return  # a broken header: the full walk names what is wrong, and where
    finally:
        stream.seek(0)
    if rows and columns and rows * columns * frames > max_pixels:
        raise InstanceTooLarge(  # worded as dicom_io.pixels.check_header words the same limit
            f"a deflated image of {rows} x {columns} x {frames} frame(s) = {rows * columns * frames} "
            f"pixels (Rows x Columns x frames) exceeds limits.max_pixels ({max_pixels}): refused "
            "before its pixel data is inflated")
