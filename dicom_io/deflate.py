"""Deflated data sets (Deflated Explicit VR Little Endian) read as a stream, never whole.

pydicom 3 inflates a deflated data set with one ``zlib.decompress`` of the whole file, even
with ``stop_before_pixels``: a C-STORE of 0.25 MB on the wire (16000 x 16000 zeros) cost the
daemon 256 MB at each of its three reads (issue 17: +0.93 GB for one, 4.3 GB for four in
parallel). :class:`InflatedStream` is a read-only, seekable file object over the inflated data
set that inflates at most :data:`CHUNK` bytes at a time as it is read, under a limit, so memory
is what the reader asks for plus about two chunks. Seeking forward inflates and discards;
seeking back within :data:`LOOKBACK` bytes is served from memory, further back inflates again
from the start (pydicom and :mod:`dicom_io.validate` only peek a few bytes back).

:func:`read_file` is ``pydicom.dcmread`` with that: a deflated file's header is parsed from the
stream, and its Pixel Data is deferred (pydicom's deferred read, through an
:class:`InflatedStream`): no pixel byte is inflated until someone reads ``ds.PixelData``, which
:func:`dicom_io.pixels.check_header` does only once Rows x Columns x frames passed
``limits.max_pixels``. Every other transfer syntax goes to ``pydicom.dcmread`` unchanged.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom import uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.filereader import _read_file_meta_info  # what read_file_meta_info does, kept open
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import Tag

from dicom_io.errors import InstanceTooLarge, InvalidInstance

#: Inflated bytes produced per zlib call, and deflated bytes read from the file per read. A
#: chunk of output needs at most about CHUNK / 1032 bytes of input (deflate's best ratio).
CHUNK = 1 << 20
READ = 1 << 16
#: Bytes kept before the current chunk, so a reader that peeks back need not start again.
LOOKBACK = 1 << 16
#: Bytes tolerated after the deflate stream: a pad byte, or the 8-byte gzip trailer (CRC-32
#: and size) some writers leave (pydicom's own test file ``image_dfl.dcm`` has one).
DEFLATE_TRAILER = 8

#: Pixel Data, Float Pixel Data, Double Float Pixel Data: where a header ends
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF


class InflatedStream(io.RawIOBase):
    """The inflated data set of the deflated Part 10 file at ``path``, whose deflate stream
    starts at byte ``start``. ``limit``: more inflated bytes than this raise
    :class:`~dicom_io.errors.InstanceTooLarge` (None: no limit; reads are still bounded by
    what is asked). A broken or truncated deflate stream raises
    :class:`~dicom_io.errors.InvalidInstance`.
    """

    def __init__(self, path: Path | str, start: int, *, limit: int | None = None) -> None:
        super().__init__()
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._file_size = os.fstat(self._raw.fileno()).st_size
        self._start = start
        self.limit = limit
        self._total: int | None = None  # the inflated size, once the end was reached
        #: a broken or too long stream stays so: every later read raises the same error
        self._error: InvalidInstance | InstanceTooLarge | None = None
        self._restart()

    def _restart(self) -> None:
        self._raw.seek(self._start)
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pos = 0  # the reader's position in the inflated data set
        self._win = b""  # inflated bytes [self._win_at, self._win_at + len(self._win))
        self._win_at = 0
        self._ended = False

    # -- io.RawIOBase ----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += self.size()
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence ({whence})")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._pos = offset
        return offset

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes from the current position (fewer at the end); all that is left
        when ``n`` is negative (still under the limit)."""
        want = (1 << 62) if n is None or n < 0 else n
        if want <= CHUNK:  # the common case: a header, a value
            out = self._piece(want)
            if len(out) == want or not out:
                return out
            parts = [out]
            want -= len(out)
        else:
            parts = []
        buf = io.BytesIO()  # a large value (Pixel Data): one copy of it, no more
        for part in parts:
            buf.write(part)
        while want:
            piece = self._piece(min(want, CHUNK))
            if not piece:
                break
            buf.write(piece)
            want -= len(piece)
        return buf.getvalue()

    def close(self) -> None:
        raw = getattr(self, "_raw", None)  # None: the file could not be opened
        if raw is not None:
            raw.close()
        super().close()

    # -- inflating -------------------------------------------------------------------------

    def size(self) -> int:
        """The inflated size: inflates (and discards) to the end of the deflate stream once."""
        while self._total is None:
            self._advance(keep=False)
        return self._total

    def _piece(self, n: int) -> bytes:
        """At most ``n`` bytes at the current position, from the current window."""
        if self._pos < self._win_at:  # further back than the window: inflate from the start
            pos = self._pos
            self._restart()
            self._pos = pos
        while self._pos >= self._win_at + len(self._win):
            if self._ended:
                return b""
            self._advance(keep=True)
        off = self._pos - self._win_at
        piece = self._win[off:off + n]
        self._pos += len(piece)
        return piece

    def _advance(self, keep: bool) -> None:
        """Inflate the next chunk into the window (after the last LOOKBACK bytes if ``keep``)."""
        if self._error is not None:
            raise self._error
        end = self._win_at + len(self._win)
        try:
            data = self._inflate()
            if self.limit is not None and end + len(data) > self.limit:
                raise InstanceTooLarge(f"the deflated data set inflates to more than "
                                       f"{self.limit} bytes (limits.max_instance_mb)")
        except (InvalidInstance, InstanceTooLarge) as exc:
            self._error = exc
            raise
        tail = self._win[-LOOKBACK:] if keep else b""
        self._win = tail + data
        self._win_at = end - len(tail)
        if self._ended:
            self._total = end + len(data)

    def _inflate(self) -> bytes:
        """The next inflated bytes (at most CHUNK; empty only at the end of the stream)."""
        while True:
            src = self._z.unconsumed_tail or self._raw.read(READ)
            if not src:
                raise InvalidInstance(f"the deflated data set is truncated: its deflate stream "
                                      f"does not end before the end of the file "
                                      f"({self._file_size} bytes)")
            try:
                data = self._z.decompress(src, CHUNK)
            except zlib.error as exc:
                raise InvalidInstance(f"the deflated data set does not inflate: {exc}") from exc
            if self._z.eof:
                self._check_trailer()
                self._ended = True
                return data
            if data:
                return data

    def _check_trailer(self) -> None:
        trailing = len(self._z.unused_data) + len(self._raw.read(DEFLATE_TRAILER + 1))
        if trailing > DEFLATE_TRAILER:
            raise InvalidInstance(f"more than {DEFLATE_TRAILER} bytes follow the end of the "
                                  "deflated data set")


def _open_inflated(path: str, mode: str = "rb", *, start: int, limit: int | None) -> InflatedStream:
    """``FileDataset.fileobj_type`` of a deflated file: pydicom's deferred read opens this."""
    return InflatedStream(path, start, limit=limit)


def _deferred_pixels(stream: InflatedStream) -> RawDataElement | None:
    """The element at the stream's position (a pixel data element, where pydicom stopped) with
    its value deferred: its header is read, its value not inflated."""
    at = stream.tell()
    head = stream.read(8)
    if len(head) < 8:
        return None
    group, elem, vr = struct.unpack("<HH2s", head[:6])
    if vr in _LONG_VRS:
        more = stream.read(4)
        if len(more) < 4:
            raise InvalidInstance(f"truncated: the length of ({group:04X},{elem:04X}) at offset "
                                  f"{at} of the inflated data set")
        (length,) = struct.unpack("<L", more)
    else:
        (length,) = struct.unpack("<H", head[6:8])
    if length == _UNDEFINED:
        raise InvalidInstance(f"({group:04X},{elem:04X}) at offset {at} is encapsulated (undefined "
                              "length) in the native transfer syntax Deflated Explicit VR Little Endian")
    return RawDataElement(Tag(group, elem), vr.decode("ascii", "replace"), length, None,
                          stream.tell(), False, True)


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in PIXEL_TAGS


def read_deflated(path: Path | str, start: int, preamble: bytes | None,
                  file_meta: pydicom.dataset.FileMetaDataset, *, stop_before_pixels: bool = False,
                  limit: int | None = None) -> FileDataset:
    """The deflated file at ``path`` (its data set starting at ``start``) as ``dcmread`` would
    read it, inflated as a stream: the header up to the Pixel Data, then the Pixel Data
    element deferred (unless ``stop_before_pixels``). Elements after the Pixel Data (trailing
    padding) are not read, as with ``stop_before_pixels``: nothing that decodes pixels needs them.
    """
    path = str(path)
    with InflatedStream(path, start, limit=limit) as stream:
        ds = read_dataset(stream, False, True, stop_when=_at_pixels)
        pixels = None if stop_before_pixels else _deferred_pixels(stream)
    if pixels is not None:
        ds[pixels.tag] = pixels
    out = FileDataset(path, ds, preamble, file_meta, False, True)
    out.set_original_encoding(False, True, ds.original_character_set)
    out.fileobj_type = functools.partial(_open_inflated, start=start, limit=limit)
    return out


def read_file(path: Path | str, *, stop_before_pixels: bool = False,
              limit: int | None = None) -> FileDataset:
    """``pydicom.dcmread(path, ...)``, except that a deflated data set is inflated as a stream
    (:func:`read_deflated`): never whole in memory, its Pixel Data only when it is read, and
    at most ``limit`` bytes of it (:class:`~dicom_io.errors.InstanceTooLarge`).

    Raises what ``dcmread`` raises for a broken file, and InvalidInstance for a broken deflate
    stream.
    """
    with open(path, "rb") as fp:
        preamble = read_preamble(fp, False)
        file_meta = _read_file_meta_info(fp)
        start = fp.tell()
    if file_meta.get("TransferSyntaxUID") != uid.DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    return read_deflated(path, start, preamble, file_meta, stop_before_pixels=stop_before_pixels,
                         limit=limit)
