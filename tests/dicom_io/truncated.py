"""Files cut short, in several transfer syntaxes (issue 18, item 6).

A transfer that stops early, a disk that filled up, a copy interrupted: the file simply ends.
pydicom reads such a file leniently: cut in its pixel data, an encapsulated one comes back
with a data set that lost the elements it had read (it said "modality (none) is not scored");
cut in its header, the elements after the cut are missing. :func:`write_truncated` writes one
small synthetic view per encoding of :data:`ENCODINGS`, cut in its pixel data or in its header,
by the encoders the corpus uses (``tests/dicom_io/corpus.py``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import pydicom
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_io.synthetic import StudySpec, make_instance
from tests.dicom_io.corpus import OPENJPH, PYDICOM, Encoding, missing_encoder, write_encoding

_OPENJPEG = (("encoding_plugin", "pylibjpeg"),)

#: the encodings a file is cut short in
ENCODINGS: tuple[Encoding, ...] = (
    Encoding(uid.ExplicitVRLittleEndian, "ExplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.ImplicitVRLittleEndian, "ImplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.DeflatedExplicitVRLittleEndian, "DeflatedExplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.ExplicitVRBigEndian, "ExplicitVRBigEndian", True, "dcmconv", ("+tb",)),
    Encoding(uid.RLELossless, "RLELossless", True, "dcmcrle"),
    Encoding(uid.JPEGLosslessSV1, "JPEGLosslessSV1", True, "dcmcjpeg", ("+e1",)),
    Encoding(uid.JPEG2000Lossless, "JPEG2000Lossless", True, PYDICOM, compress_kwargs=_OPENJPEG),
    Encoding(uid.JPEG2000, "JPEG2000", False, PYDICOM, compress_kwargs=_OPENJPEG + (("j2k_cr", [8]),)),
    Encoding(uid.HTJ2KLossless, "HTJ2KLossless", True, OPENJPH, ("-reversible", "true")),
)

Where = Literal["pixels", "header"]


def available(enc: Encoding) -> bool:
    import shutil

    if enc.tool in (PYDICOM, OPENJPH):
        return missing_encoder(enc) is None
    return shutil.which(enc.tool) is not None


def source(seed: int = 18) -> Dataset:
    """A 256 x 256 12-bit CR wrist view, uncompressed, with file meta."""
    return make_instance(StudySpec(views=1, rows=256, columns=256, bits_stored=12, seed=seed), 0)


def cut_offset(path: Path, where: Where) -> int:
    """Where to cut ``path``: halfway through its pixel data, or inside the element before
    Modality (0008,0060), so the data set loses Modality and everything after it."""
    data = path.read_bytes()
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    if ds.file_meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian:
        # the deflate stream: its first bytes hold the header, the rest the pixels
        return len(data) // 2 if where == "pixels" else 400
    if where == "pixels":
        return len(data) - (len(data) - _pixel_data_at(path)) // 2
    before = max(e.tag for e in ds if e.tag < 0x00080060)
    return _tag_at(data, before) + 6  # inside its length


def _tag_at(data: bytes, tag: int) -> int:
    group, elem = tag >> 16, tag & 0xFFFF
    for order in ("little", "big"):
        needle = group.to_bytes(2, order) + elem.to_bytes(2, order)
        at = data.find(needle, 132)
        if at >= 0:
            return at
    raise ValueError(f"tag {tag:08X} not found")


def _pixel_data_at(path: Path) -> int:
    data = path.read_bytes()
    for needle in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        at = data.rfind(needle)
        if at >= 0:
            return at
    raise ValueError(f"{path}: no Pixel Data tag found")


def write_truncated(folder: Path, where: Where, encodings: tuple[Encoding, ...] = ENCODINGS,
                    ds: Dataset | None = None) -> dict[str, Path]:
    """Encoding name -> a view in that encoding cut short ``where``, in ``folder``; encodings
    whose encoder is not installed are left out. Every view is the same study."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = ds if ds is not None else source()
    reference = copy.deepcopy(ds)
    whole_dir = folder / "whole"
    whole_dir.mkdir(exist_ok=True)
    out = {}
    for enc in encodings:
        if not available(enc):
            continue
        view = copy.deepcopy(reference)
        view.SOPInstanceUID = view.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        whole = write_encoding(view, enc, whole_dir / f"{enc.name}.dcm")
        data = whole.read_bytes()
        cut = folder / f"{enc.name}.dcm"
        cut.write_bytes(data[:cut_offset(whole, where)])
        out[enc.name] = cut
    return out
