"""Deflate bombs: Deflated Explicit VR Little Endian radiographs whose pixels are all zeros.

A 16000 x 16000 8-bit image is 256 MB of pixels but some 0.25 MB deflated: what an attacker
sends to make a receiver inflate a quarter of a gigabyte (issue 17, finding 3). pydicom would
build the 256 MB in memory to write one; here the header is deflated and then the zeros, as one
deflate stream made of two parts: the header's part ends with a full flush (byte aligned, the
dictionary reset), so the zeros' part, made once (:func:`deflated_zeros`), can follow any header.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from dicom_io.synthetic import StudySpec, make_instance

_CHUNK = 1 << 20


def _compressor() -> "zlib._Compress":
    return zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)


@functools.lru_cache(maxsize=4)
def deflated_zeros(nbytes: int) -> bytes:
    """``nbytes`` zeros as the final part of a raw deflate stream (about nbytes / 1030 bytes)."""
    c = _compressor()
    zeros = bytes(_CHUNK)
    parts = [c.compress(zeros) for _ in range(nbytes // _CHUNK)]
    parts.append(c.compress(bytes(nbytes % _CHUNK)))
    parts.append(c.flush())
    return b"".join(parts)


def header(rows: int, columns: int, **spec: object) -> Dataset:
    """A synthetic CR header (new UIDs unless ``spec`` names them) of an 8-bit ``rows`` x
    ``columns`` MONOCHROME2 image, without its Pixel Data."""
    ds = make_instance(StudySpec(views=1, rows=8, columns=8, **spec), 0)  # type: ignore[arg-type]
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.WindowCenter, ds.WindowWidth = 128, 256
    return ds


def encode(ds: Dataset) -> bytes:
    """``ds`` (no File Meta) as an Explicit VR Little Endian data set."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def bomb_data_set(ds: Dataset) -> bytes:
    """The deflated data set of ``ds`` (a :func:`header`) followed by Rows x Columns zeros."""
    n = int(ds.Rows) * int(ds.Columns)
    pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, n + n % 2)
    c = _compressor()
    head = c.compress(encode(ds) + pixel_header) + c.flush(zlib.Z_FULL_FLUSH)
    return head + deflated_zeros(n + n % 2)


def part10(ds: Dataset, data_set: bytes, transfer_syntax: str = uid.DeflatedExplicitVRLittleEndian) -> bytes:
    """A Part 10 file: preamble, File Meta group for ``ds``, then ``data_set`` as it is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = uid.PYDICOM_IMPLEMENTATION_UID
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + data_set


def bomb(rows: int = 16000, columns: int = 16000, **spec: object) -> tuple[Dataset, bytes]:
    """(header, Part 10 file bytes) of a deflate bomb of ``rows`` x ``columns`` 8-bit zeros."""
    ds = header(rows, columns, **spec)
    return ds, part10(ds, bomb_data_set(ds))
