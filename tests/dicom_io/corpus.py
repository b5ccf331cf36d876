"""An encoded corpus: one source image written in every transfer syntax the daemon must decode.

The encoders are the real ones a site's images come from, not a re-implementation:

* pydicom writes the uncompressed syntaxes it can (implicit VR, explicit VR and deflated
  explicit VR little endian) and encodes RLE Lossless (its native encoder) and JPEG 2000
  (lossless and lossy, through pylibjpeg-openjpeg);
* DCMTK writes explicit VR big endian (``dcmconv +tb``: pydicom refuses to change endianness),
  the JPEG processes (``dcmcjpeg``) and JPEG-LS (``dcmcjpls``);
* HTJ2K is encoded by OpenJPH's ``ojph_compress`` (Debian ``openjph-tools``; pydicom 3.0 has
  no HTJ2K encoder and pylibjpeg-openjpeg 2.6 only decodes it) from a PGM of the stored
  values, and the codestream encapsulated by pydicom. The RPCL entry uses RPCL progression;
  OpenJPH 0.9 writes no TLM marker, which decoders do not need. Without the tool,
  :func:`missing_encoder` says so and :func:`build_corpus` leaves HTJ2K out.

Every file written is read back and its Transfer Syntax UID checked against the one asked
for (DCMTK's options change between versions; a silent fallback would make a test pass for
the wrong syntax).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder

from dicom_io.synthetic import StudySpec, make_instance

#: pydicom writes it (uncompressed: by setting the transfer syntax; compressed: ``compress``)
PYDICOM = "pydicom"
#: OpenJPH's encoder (HTJ2K)
OPENJPH = "ojph_compress"


@dataclass(frozen=True)
class Encoding:
    """One transfer syntax of the corpus and how it is produced."""

    uid: str
    name: str  #: short, for test ids and file names
    lossless: bool
    tool: str  #: ``PYDICOM`` or the DCMTK executable
    args: tuple[str, ...] = ()  #: DCMTK options
    compress_kwargs: tuple[tuple[str, object], ...] = ()  #: for ``Dataset.compress``
    max_bits_stored: int = 16  #: the process cannot carry more (JPEG baseline: 8)

    @property
    def is_j2k(self) -> bool:
        """JPEG 2000 or HTJ2K: the syntaxes whose decoding may use a reduced resolution."""
        return self.uid in J2K_FAMILY


J2K_FAMILY = frozenset({
    uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K,
})

_OPENJPEG = (("encoding_plugin", "pylibjpeg"),)

#: Every transfer syntax the daemon must decode (dicom_io.codecs.CANDIDATES), in that order.
ENCODINGS: tuple[Encoding, ...] = (
    Encoding(uid.ExplicitVRLittleEndian, "ExplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.ImplicitVRLittleEndian, "ImplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.DeflatedExplicitVRLittleEndian, "DeflatedExplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.ExplicitVRBigEndian, "ExplicitVRBigEndian", True, "dcmconv", ("+tb",)),
    Encoding(uid.RLELossless, "RLELossless", True, PYDICOM),
    # lossy JPEG: +sr scales by the min/max of the pixel *range*, i.e. keeps the stored values
    # (DCMTK's default +sp stretches min..max of the image and shifts the window to match,
    # which is right but makes the pixel values incomparable with the source)
    Encoding(uid.JPEGBaseline8Bit, "JPEGBaseline8Bit", False, "dcmcjpeg", ("+eb", "+sr"),
             max_bits_stored=8),
    Encoding(uid.JPEGExtended12Bit, "JPEGExtended12Bit", False, "dcmcjpeg", ("+ee", "+sr"),
             max_bits_stored=12),
    Encoding(uid.JPEGLossless, "JPEGLossless", True, "dcmcjpeg", ("+el",)),
    Encoding(uid.JPEGLosslessSV1, "JPEGLosslessSV1", True, "dcmcjpeg", ("+e1",)),
    Encoding(uid.JPEGLSLossless, "JPEGLSLossless", True, "dcmcjpls", ("+el",)),
    Encoding(uid.JPEGLSNearLossless, "JPEGLSNearLossless", False, "dcmcjpls", ("+en", "+md", "3")),
    Encoding(uid.JPEG2000Lossless, "JPEG2000Lossless", True, PYDICOM, compress_kwargs=_OPENJPEG),
    Encoding(uid.JPEG2000, "JPEG2000", False, PYDICOM,
             compress_kwargs=_OPENJPEG + (("j2k_cr", [10]),)),
    Encoding(uid.HTJ2KLossless, "HTJ2KLossless", True, OPENJPH,
             ("-reversible", "true", "-prog_order", "LRCP")),
    Encoding(uid.HTJ2KLosslessRPCL, "HTJ2KLosslessRPCL", True, OPENJPH,
             ("-reversible", "true", "-prog_order", "RPCL")),
    Encoding(uid.HTJ2K, "HTJ2K", False, OPENJPH, ("-qstep", "0.002")),
)

BY_UID: dict[str, Encoding] = {e.uid: e for e in ENCODINGS}

#: the transfer syntax UIDs whose encoding gives back the stored values exactly
LOSSLESS: frozenset[str] = frozenset(e.uid for e in ENCODINGS if e.lossless)

#: the reference every other entry is compared with
REFERENCE = uid.ExplicitVRLittleEndian

_UNCOMPRESSED = frozenset({
    uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
})


#: Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1) of the syntaxes pydicom encodes lossily
_LOSSY_METHOD = {uid.JPEG2000: "ISO_15444_1", uid.HTJ2K: "ISO_15444_15"}


class CorpusError(RuntimeError):
    """An encoder failed or wrote another transfer syntax than the one asked for."""


def is_lossless(ts_uid: str) -> bool:
    return ts_uid in LOSSLESS


def missing_encoder(enc: Encoding) -> str | None:
    """Why ``enc`` cannot be produced on this machine, or None when it can."""
    if enc.tool == OPENJPH:
        if shutil.which(OPENJPH) is None:
            return (f"no encoder for {uid.UID(enc.uid).name} is installed: pydicom "
                    f"{pydicom.__version__} has none, pylibjpeg-openjpeg only decodes HTJ2K, and "
                    "OpenJPH's ojph_compress (Debian package openjph-tools) is missing")
        return None
    if enc.tool != PYDICOM:
        if shutil.which(enc.tool) is None:
            return f"DCMTK tool {enc.tool!r} not installed (Debian package dcmtk)"
        return None
    if enc.uid in _UNCOMPRESSED:
        return None
    try:
        encoder = get_encoder(enc.uid)
    except NotImplementedError:
        return (f"no encoder for {uid.UID(enc.uid).name} is installed: pydicom "
                f"{pydicom.__version__} has none, pylibjpeg-openjpeg (OpenJPEG 2.5) only decodes "
                "HTJ2K, and neither OpenJPH (ojph_compress) nor Kakadu (kdu_compress) is used here")
    if not encoder.is_available:
        return (f"pydicom's {uid.UID(enc.uid).name} encoder has no working plugin: "
                f"{'; '.join(encoder.missing_dependencies)}")
    return None


def not_applicable(enc: Encoding, ds: Dataset) -> str | None:
    """Why ``enc`` cannot carry ``ds``'s pixels (too many bits), or None."""
    if int(ds.BitsStored) > enc.max_bits_stored:
        return f"{uid.UID(enc.uid).name} carries at most {enc.max_bits_stored} bits stored"
    return None


def eight_bit(ds: Dataset) -> Dataset:
    """A copy of ``ds`` with 8 bits allocated and stored: the source JPEG baseline needs.

    ``ds`` must already hold values that fit in 8 bits (``StudySpec(bits_stored=8)``).
    """
    arr = ds.pixel_array
    if int(arr.max()) > 255:
        raise ValueError("the pixel values do not fit in 8 bits: make the source with bits_stored=8")
    out = copy.deepcopy(ds)
    out.BitsAllocated = 8
    out.BitsStored = 8
    out.HighBit = 7
    out.PixelData = arr.astype(np.uint8).tobytes()
    out["PixelData"].VR = "OB"
    return out


def source_instance(spec: StudySpec) -> Dataset:
    """The one view of ``spec`` a corpus is built from: made 8-bit when ``spec`` says 8 bits
    stored (the source JPEG baseline needs)."""
    ds = make_instance(spec, 0)
    return eight_bit(ds) if spec.bits_stored == 8 else ds


def corpus_entries(sources: Mapping[str, StudySpec],
                   select: Callable[[Encoding], bool] = lambda e: True) -> list:  # type: ignore[type-arg]
    """(source, encoding) test parameters for each source and each encoding that can carry it
    and ``select`` keeps, ids ``source-Syntax``; the DCMTK- and OpenJPH-made ones are marked
    integration."""
    out = []
    for source, spec in sources.items():
        for enc in ENCODINGS:
            if spec.bits_stored > enc.max_bits_stored or not select(enc):
                continue
            marks = [pytest.mark.integration] if enc.tool != PYDICOM else []
            out.append(pytest.param(source, enc, id=f"{source}-{enc.name}", marks=marks))
    return out


def build_corpus(tmp_dir: Path, ds: Dataset) -> dict[str, Path]:
    """Write ``ds`` once per transfer syntax of :data:`ENCODINGS`; return UID -> file.

    ``ds`` is an uncompressed single-frame instance with file meta (``dicom_io.synthetic``).
    Syntaxes whose encoder is missing here (:func:`missing_encoder`) or that cannot carry
    ``ds``'s bit depth (:func:`not_applicable`) are left out; ask those functions why.
    Raises :class:`CorpusError` when an encoder fails or writes another transfer syntax.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    source = tmp_dir / "source.dcm"
    reference = copy.deepcopy(ds)
    reference.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    reference.save_as(source, enforce_file_format=True)
    corpus: dict[str, Path] = {}
    for enc in ENCODINGS:
        if missing_encoder(enc) or not_applicable(enc, ds):
            continue
        corpus[enc.uid] = write_encoding(reference, enc, tmp_dir / f"{enc.name}.dcm", source=source)
    return corpus


def write_encoding(reference: Dataset, enc: Encoding, path: Path, *, source: Path | None = None) -> Path:
    """``reference`` (uncompressed, explicit VR little endian, with file meta) written to ``path``
    by ``enc``'s encoder; ``source``: the same data set already saved (DCMTK reads a file).
    Raises :class:`CorpusError` when the encoder fails or writes another transfer syntax."""
    if enc.tool == PYDICOM:
        _write_with_pydicom(reference, enc, path)
    elif enc.tool == OPENJPH:
        _write_with_openjph(reference, enc, path)
    else:
        if source is None:
            source = path.with_name(path.stem + "-source.dcm")
            reference.save_as(source, enforce_file_format=True)
        _run_dcmtk([enc.tool, *enc.args, str(source), str(path)])
    written = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if written != enc.uid:
        raise CorpusError(f"{enc.tool} {' '.join(enc.args)} wrote {written.name}, "
                          f"not {uid.UID(enc.uid).name}")
    return path


def _write_with_pydicom(source: Dataset, enc: Encoding, path: Path) -> None:
    out = copy.deepcopy(source)
    if enc.uid in _UNCOMPRESSED:
        out.file_meta.TransferSyntaxUID = enc.uid  # pydicom 3 writes (and deflates) to match
    else:
        uncompressed_size = len(out.PixelData)
        out.compress(enc.uid, **dict(enc.compress_kwargs))  # type: ignore[arg-type]
        if not enc.lossless:  # pydicom leaves these to the caller (PS3.3 C.7.6.1.1.5)
            out.LossyImageCompression = "01"
            out.LossyImageCompressionMethod = _LOSSY_METHOD[enc.uid]
            out.LossyImageCompressionRatio = round(uncompressed_size / len(out.PixelData), 2)
    out.save_as(path, enforce_file_format=True)


def _write_with_openjph(source: Dataset, enc: Encoding, path: Path) -> None:
    """HTJ2K by ``ojph_compress`` from a binary PGM of the stored values, then encapsulated."""
    from pydicom.encaps import encapsulate

    arr = source.pixel_array
    bits = int(source.BitsStored)
    pgm, j2c = path.with_suffix(".pgm"), path.with_suffix(".j2c")
    big_endian = arr.astype(">u2" if bits > 8 else "u1")
    pgm.write_bytes(f"P5\n{arr.shape[1]} {arr.shape[0]}\n{(1 << bits) - 1}\n".encode()
                    + big_endian.tobytes())
    _run_dcmtk([OPENJPH, "-i", str(pgm), "-o", str(j2c), *enc.args])
    codestream = j2c.read_bytes()
    out = copy.deepcopy(source)
    out.file_meta.TransferSyntaxUID = enc.uid
    out.PixelData = encapsulate([codestream + b"\0" * (len(codestream) % 2)])
    out["PixelData"].VR = "OB"
    if not enc.lossless:
        out.LossyImageCompression = "01"
        out.LossyImageCompressionMethod = _LOSSY_METHOD[enc.uid]
        out.LossyImageCompressionRatio = round(len(source.PixelData) / len(codestream), 2)
    out.save_as(path, enforce_file_format=True)
    pgm.unlink()
    j2c.unlink()


def _run_dcmtk(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        raise CorpusError(f"{' '.join(cmd)} failed ({exc.returncode}): {exc.stderr.strip()}") from exc


def truncated_copy(path: Path, out: Path) -> Path:
    """``path`` (one encapsulated frame) with the first half of its codestream only.

    A transfer cut short, re-encapsulated validly: reading the file succeeds and only decoding
    the pixels can notice. (Zeroing bytes in the middle instead is no test of error handling:
    every decoder here but RLE's decodes such a codestream to garbage without a complaint.)
    """
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    frame = frame[: len(frame) // 2]
    if len(frame) % 2:
        frame += b"\0"  # fragments have an even length
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(out, enforce_file_format=True)
    return out
