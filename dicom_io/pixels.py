"""From a stored radiograph to exactly the float32 tensor the model was trained on.

The path of one view (every step a pure function of arrays and attributes, except decoding)::

    header checks        pixel data present, Rows x Columns x Bits agree with the data, photometric
                         interpretation supported, at most ``max_pixels`` pixels
    decode               pydicom's pixel handlers (pylibjpeg, openjpeg, libjpeg plugins); a
                         lossless JPEG 2000 / HTJ2K codestream only to the resolution level the
                         working image is made from (OpenJPEG through Pillow), so a 2k x 2k view
                         decodes as 512 x 512: exactly the integers the next step makes of a
                         full decode
    stored values        Bits Stored, High Bit and Pixel Representation honoured
    padding              Pixel Padding Value (and Range Limit) masked out of everything below
    working resolution   JPEG 2000's reversible 5/3 wavelet low-pass, as many levels as keep the
                         shorter side >= ``working_size``, then area-averaged to it (never
                         upscaled): every encoding of the same pixels gives the same image
    Modality LUT         Rescale Slope/Intercept, or the Modality LUT Sequence (pydicom)
    VOI LUT              the first window (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID, the
                         formulas of PS3.3 C.11.2.1.2), or the first VOI LUT Sequence item
                         (pydicom), or, with neither, a robust percentile window over the
                         non-padding pixels
    Presentation         MONOCHROME1 or Presentation LUT Shape INVERSE: inverted, so bone is bright;
                         padding black; 8 bit
    colour               RGB / YBR / PALETTE COLOR secondary captures: to RGB, then grey (ITU-R 601)
    crop (optional)      to the anatomy: uniform borders stripped, CLAHE, Canny edges, morphological
                         close, the connected components that matter, their bounding box
    CLAHE (optional)     contrast-limited adaptive histogram equalisation
    resize               squashed to size x size (the MURA recipe) or aspect-preserving with padding
    normalise            ImageNet mean/std, grey copied to three channels

Two sets of options: :class:`Preprocessing` is what the model was trained with and travels in its
card (size, resize, crop, CLAHE, mean/std); :class:`DecodeOptions` are run-time choices of this
installation (working resolution, reduced decoding, multi-frame policy, the size limit).
"""

from __future__ import annotations

import io
import logging
import math
import struct
import warnings
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping

import cv2
import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import _get_jpg_parameters  # JPEG / JPEG-LS SOF parser
from pydicom import uid

from dicom_io.deflate import read_file
from dicom_io.errors import InvalidInstance, PixelDecodeError, UnsupportedInstance
from dicom_io.geometry import ViewGeometry

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["squash", "letterbox"]
MultiFrameMode = Literal["refuse", "frames"]

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
J2K_SYNTAXES = frozenset({uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless,
                          uid.HTJ2KLosslessRPCL, uid.HTJ2K})
#: Grey levels (of 255): a uniform border line darker than PEEL_DARK is padding or bare
#: background, brighter than BORDER_BRIGHT collimation; a background class darker than
#: BORDER_DARK is the exposed background.
PEEL_DARK, BORDER_DARK, BORDER_BRIGHT = 12, 40, 150
#: The percentiles of the fallback window when a view carries no VOI (robust to outliers).
PERCENTILE_WINDOW = (0.5, 99.5)


@dataclass(frozen=True)
class Preprocessing:
    """What a model was trained with; stored in its card and required of the daemon's config."""

    size: int = 224
    resize: ResizeMode = "squash"
    crop: bool = True
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_card(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "Preprocessing":
        """The preprocessing a model card records.

        A key the card leaves out means the pipeline from before that key existed
        (:data:`CARD_LEGACY`: squashed, no crop, no CLAHE; the MURA size and ImageNet mean/std),
        never today's default: a model trained without cropping must not be served cropped.
        Raises ValueError naming keys it does not know, so a card from a newer radtriage is not
        silently served with the wrong preprocessing.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(card) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys in the model card: {', '.join(unknown)}")
        values = {**CARD_LEGACY, **card}
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def differences(self, other: "Preprocessing") -> list[str]:
        """``key: ours vs theirs`` for every setting that differs (floats within 1e-6)."""
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            same = (np.allclose(a, b, rtol=0, atol=1e-6) if isinstance(a, (tuple, float)) else a == b)
            if not same:
                out.append(f"{f.name}: {_show(a)} vs {_show(b)}")
        return out


#: What a model card that leaves these keys out was trained with (radtriage before them, the seeds)
CARD_LEGACY: dict[str, Any] = {"resize": "squash", "crop": False, "clahe": False}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class DecodeOptions:
    """Run-time choices that do not belong to the model."""

    #: The shorter side at which a view is windowed and cropped (never upscaled); 0: full size.
    #: A grey view gets there by JPEG 2000's reversible wavelet low-pass (the halvings that keep
    #: the shorter side >= working_size), then an area average (:func:`working_values`).
    working_size: int = 512
    #: Decode a lossless JPEG 2000 / HTJ2K codestream only to that low-pass resolution level:
    #: the same tensor as a full decode, faster (``benchmarks/README.md``). False: every view
    #: decoded in full.
    reduced_decode: bool = True
    #: A multi-frame instance: refused, or every frame prepared (and scored) on its own.
    multiframe: MultiFrameMode = "refuse"
    #: Rows x Columns x frames above this is refused before anything is decoded.
    max_pixels: int = 50_000_000


# -- reading and header checks ----------------------------------------------------------------


def read_dataset(path: Path | str, *, stop_before_pixels: bool = False,
                 limit: int | None = None) -> Dataset:
    """The stored view at ``path``. A deflated one is inflated as a stream, its Pixel Data only
    when first read (:func:`dicom_io.deflate.read_file`), which :func:`check_header` does after
    Rows x Columns x frames passed ``max_pixels``: a deflate bomb is refused from its header.
    ``limit``: a deflated data set may inflate to at most this many bytes (InstanceTooLarge)."""
    try:
        return read_file(path, stop_before_pixels=stop_before_pixels, limit=limit)
    except OSError:
        raise
    except InvalidInstance as exc:  # a broken deflate stream
        raise InvalidInstance(f"not a readable DICOM file: {exc}") from exc
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError,
            struct.error, zlib.error, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidInstance(f"not a readable DICOM file: {type(exc).__name__}: {exc}") from exc


def pixel_data_length(ds: Dataset) -> int | None:
    """The length of Pixel Data without reading a deferred value (a deflated view's pixels are
    inflated only once its header passed); None when encapsulated (undefined length)."""
    elem = ds.get_item("PixelData", keep_deferred=True)
    if isinstance(elem, RawDataElement):
        if elem.value is not None:
            return len(elem.value)
        return None if elem.length == 0xFFFFFFFF else int(elem.length)
    return len(elem.value) if elem.value is not None else 0


def transfer_syntax_name(ds: Dataset) -> str:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not ts:
        return "unknown transfer syntax"
    name = getattr(ts, "name", "") or ""
    return f"{name} ({ts})" if name and name != str(ts) else str(ts)


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise InvalidInstance(f"{keyword} is missing")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInstance(f"{keyword} {value!r} is not a number") from exc


def number_of_frames(ds: Dataset) -> int:
    n = ds.get("NumberOfFrames", 1)
    if n is None or n == "":
        return 1
    try:
        n = int(n)
    except (TypeError, ValueError) as exc:
        raise InvalidInstance(f"NumberOfFrames {n!r} is not a number") from exc
    if n < 1:
        raise InvalidInstance(f"NumberOfFrames {n} is not positive")
    return n


def check_header(ds: Dataset, opts: DecodeOptions) -> None:
    """Refuse, before decoding, what cannot or must not be decoded; the error says why."""
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        raise PixelDecodeError(
            f"no pixel data ({other[0]} is not supported)" if other else "no pixel data (7FE0,0010)")
    if pixel_data_length(ds) == 0:
        raise PixelDecodeError("no pixel data: the Pixel Data element (7FE0,0010) is empty")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows < 1 or cols < 1:
        raise InvalidInstance(f"Rows x Columns {rows} x {cols} is empty")
    samples = _int(ds, "SamplesPerPixel", 1)
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored", ds.get("BitsAllocated"))
    high_bit = _int(ds, "HighBit", stored - 1)
    representation = _int(ds, "PixelRepresentation", 0)
    if allocated not in (1, 8, 16, 32) or not 1 <= stored <= allocated or not stored - 1 <= high_bit < allocated:
        raise InvalidInstance(f"Bits Allocated {allocated}, Bits Stored {stored}, High Bit {high_bit} "
                              "contradict each other")
    if representation not in (0, 1):
        raise InvalidInstance(f"Pixel Representation {representation} is neither 0 nor 1")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GREY + COLOUR:
        raise UnsupportedInstance(
            f"photometric interpretation {photometric or '(missing)'!r} is not supported "
            f"(supported: {', '.join(GREY + COLOUR)})")
    if (photometric in GREY or photometric == "PALETTE COLOR") != (samples == 1):
        raise InvalidInstance(f"Samples per Pixel {samples} contradicts {photometric}")
    frames = number_of_frames(ds)
    if rows * cols * frames > opts.max_pixels:
        raise UnsupportedInstance(
            f"{rows} x {cols} x {frames} frame(s) = {rows * cols * frames} pixels exceeds "
            f"limits.max_pixels ({opts.max_pixels})")
    if frames > 1 and opts.multiframe == "refuse":
        raise UnsupportedInstance(
            f"multi-frame images ({frames} frames) are not scored (decoding.multiframe: refuse)")
    ts = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    if ts is not None and ts.is_encapsulated and ts != uid.RLELossless:
        _check_codestreams(ds, frames)
    if ts is not None and not ts.is_compressed:
        if photometric == "YBR_FULL_422":  # stored with the chroma halved: 2 bytes a pixel
            samples = 2
        expected = math.ceil(rows * cols * frames * samples * allocated / 8)
        actual = pixel_data_length(ds) or 0  # checked before a deferred value is read
        if actual < expected:
            raise InvalidInstance(
                f"truncated pixel data: {actual} bytes, but Rows {rows} x Columns {cols} x "
                f"{frames} frame(s) x {samples} sample(s) x {allocated} bits need {expected}")
        if actual - expected >= expected // frames:  # padding is a byte or so, not a whole frame
            raise InvalidInstance(
                f"the pixel data ({actual} bytes) is at least a frame longer than Rows {rows} x "
                f"Columns {cols} x {frames} frame(s) x {samples} sample(s) x {allocated} bits "
                f"({expected}): the attributes contradict the data")


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares; None if not parsed."""
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # J2K: SOC, SIZ
        width = int.from_bytes(frame[8:12], "big") - int.from_bytes(frame[16:20], "big")
        height = int.from_bytes(frame[12:16], "big") - int.from_bytes(frame[20:24], "big")
        return height, width
    if frame[:2] == b"\xff\xd8":
        info = _get_jpg_parameters(frame)
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"])
    return None


def _check_codestreams(ds: Dataset, frames: int) -> None:
    """Every JPEG, JPEG-LS and JPEG 2000 frame must end with its EOI marker (FFD9) and declare
    the Rows x Columns of the header.

    Their decoders return a truncated stream's missing rows as garbage without a word, so a
    frame cut short in transit would be scored as if it were whole; and a codestream may
    declare a far larger image than the header, which would get past ``limits.max_pixels``.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        for number, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames), 1):
            if b"\xff\xd9" not in frame[-16:]:  # FFD9 cannot occur inside entropy-coded data
                raise PixelDecodeError(
                    f"truncated pixel data: frame {number} of {frames} has no end-of-image marker "
                    f"({transfer_syntax_name(ds)})")
            size = codestream_size(frame)
            if size is not None and size != (rows, cols):  # also keeps limits.max_pixels honest
                raise InvalidInstance(
                    f"Rows x Columns {rows} x {cols} contradict frame {number}'s codestream of "
                    f"{size[0]} x {size[1]} ({transfer_syntax_name(ds)})")
    except (ValueError, struct.error) as exc:
        raise PixelDecodeError(f"the encapsulated pixel data cannot be read "
                              f"({transfer_syntax_name(ds)}): {exc}") from exc


# -- decoding -----------------------------------------------------------------------------------

#: JPEG 2000 / HTJ2K transfer syntaxes whose codestreams are lossless by definition
J2K_LOSSLESS_SYNTAXES = frozenset({uid.JPEG2000Lossless, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL})


def wavelet_levels(rows: int, cols: int, working_size: int) -> int:
    """How many halvings keep the shorter side at least ``working_size`` (0: none, or no limit)."""
    if working_size <= 0:
        return 0
    shorter, levels = min(rows, cols), 0
    while shorter // 2 >= working_size:
        shorter //= 2
        levels += 1
    return levels


def low_pass_shape(rows: int, cols: int, levels: int) -> tuple[int, int]:
    """The size of the low-pass band ``levels`` wavelet levels down (an image at the origin)."""
    return -(-rows // (1 << levels)), -(-cols // (1 << levels))


def _along(a: np.ndarray, axis: int, start: int | None, stop: int | None = None,
           step: int | None = None) -> np.ndarray:
    """``a[start:stop:step]`` along ``axis`` (a view)."""
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop, step)
    return a[tuple(index)]


def _low_pass_1d(x: np.ndarray, axis: int, dtype: type) -> np.ndarray:
    """One level of the reversible 5/3 wavelet along ``axis``, its low-pass half (ITU-T T.800
    F.3.8 / F.4.8.2, the first sample at an even index, whole-sample symmetric extension)::

        d[n] = x[2n+1] - floor((x[2n] + x[2n+2]) / 2)      x[N] = x[N-2]
        s[n] = x[2n] + floor((d[n-1] + d[n] + 2) / 4)      d[-1] = d[0], d[N/2] = d[N/2-1]

    in exact integer arithmetic of ``dtype`` (``>>`` floors), on strided views of ``x`` (no
    transposed copy, no copy of ``x`` in ``dtype``: the values are cast as they are read)."""
    n = x.shape[axis]
    if n < 2:
        return x.astype(dtype)
    cast = {"dtype": dtype, "casting": "unsafe"}  # the caller's dtype holds every value
    even, odd = _along(x, axis, 0, None, 2), _along(x, axis, 1, None, 2)
    m = odd.shape[axis]
    d = np.empty(odd.shape, dtype)
    if m > 1:
        np.add(_along(even, axis, None, m - 1), _along(even, axis, 1, m), out=_along(d, axis, None, m - 1), **cast)
    last = _along(even, axis, m, m + 1) if n % 2 else _along(even, axis, m - 1, m)
    np.add(_along(even, axis, m - 1, m), last, out=_along(d, axis, m - 1, m), **cast)
    d >>= 1
    np.subtract(odd, d, out=d, **cast)
    s = np.empty(even.shape, dtype)
    np.add(_along(d, axis, 0, 1), _along(d, axis, 0, 1), out=_along(s, axis, 0, 1))
    if m > 1:
        np.add(_along(d, axis, None, m - 1), _along(d, axis, 1, m), out=_along(s, axis, 1, m))
    if n % 2:
        np.add(_along(d, axis, m - 1, m), _along(d, axis, m - 1, m), out=_along(s, axis, m, m + 1))
    s += 2
    s >>= 2
    np.add(s, even, out=s, **cast)
    return s


def reversible_low_pass(values: np.ndarray, levels: int, *, bits: int, signed: bool) -> np.ndarray:
    """The low-pass band ``levels`` levels down JPEG 2000's reversible 5/3 wavelet, clipped to
    the range of ``bits`` bits: exactly what a lossless JPEG 2000 or HTJ2K codestream of these
    values decodes to at that resolution level (vertical then horizontal at each level, as
    T.800 F.4.2 transforms; a decoder clips what it returns).

    The working image of every grey view is made from it (:func:`working_values`), so a view
    decodes to the identical tensor whether its codestream was decoded at a resolution level
    or its pixels came whole (uncompressed, RLE, JPEG-LS, a full decode): exact integers, no
    tolerance. ``tests/dicom_io/test_same_pixels.py`` checks it against OpenJPEG on OpenJPEG-
    and OpenJPH-made codestreams, odd sizes and clipping included. ``values`` must fit ``bits``
    (:func:`decode` guarantees it).
    """
    if levels <= 0:
        return values
    # a pass at most doubles the range: 12 bits (4096 values) fit in int16 through the first
    # level's two passes, 16 bits in int32 through many
    x = values
    for level in range(levels):
        dtype = np.int16 if bits <= 12 and level == 0 else np.int32 if bits <= 16 else np.int64
        x = _low_pass_1d(_low_pass_1d(x, 0, dtype), 1, dtype)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return np.clip(x, lo, hi)


@dataclass(frozen=True)
class J2KHeader:
    """What the main header (and the first tile-part header) of a J2K codestream says."""

    rows: int
    columns: int
    components: int
    precision: int
    signed: bool
    levels: int  #: decomposition levels (COD)
    reversible: bool  #: the 5/3 wavelet (COD transformation 1), not the irreversible 9/7
    #: one tile, image and tile at the origin, no subsampling, no COC and no tile-part COD or
    #: COC: the resolution levels are the whole image's, as :func:`reversible_low_pass` makes them
    plain: bool


def j2k_header(codestream: bytes) -> J2KHeader | None:
    """The SIZ and COD of a raw J2K codestream (None: not one, or not parsed)."""
    if codestream[:4] != b"\xff\x4f\xff\x51" or len(codestream) < 45:  # SOC then SIZ
        return None
    u32 = [int.from_bytes(codestream[i:i + 4], "big") for i in range(8, 40, 4)]
    xsiz, ysiz, xo, yo, xt, yt, xto, yto = u32
    siz_len = int.from_bytes(codestream[4:6], "big")
    components = int.from_bytes(codestream[40:42], "big")
    ssiz, xr, yr = codestream[42], codestream[43], codestream[44]
    plain = (xo == yo == xto == yto == 0 and xt >= xsiz and yt >= ysiz and xr == yr == 1)
    cod: bytes | None = None
    pos, in_tile = 4 + siz_len, False
    while pos + 4 <= len(codestream) and codestream[pos] == 0xFF:
        marker = codestream[pos + 1]
        if marker == 0x93:  # SOD: the tile-part's data starts
            break
        length = int.from_bytes(codestream[pos + 2:pos + 4], "big")
        if marker == 0x52:  # COD: Scod, SGcod (4 bytes), SPcod (levels, ..., transformation)
            if in_tile:
                plain = False
            elif pos + 14 <= len(codestream):
                cod = codestream[pos + 4:pos + 14]
        elif marker == 0x53:  # COC: component 0 coded otherwise
            plain = False
        elif marker == 0x90:  # SOT: now the first tile-part's header
            in_tile = True
        pos += 2 + length
    if cod is None:
        return None
    return J2KHeader(rows=ysiz - yo, columns=xsiz - xo, components=components,
                     precision=(ssiz & 0x7F) + 1, signed=bool(ssiz & 0x80), levels=cod[5],
                     reversible=cod[9] == 1, plain=plain)


def _low_pass_is_exact(ds: Dataset, header: J2KHeader, levels: int) -> bool:
    """Whether the codestream's resolution level ``levels`` is, to the last integer, the
    :func:`reversible_low_pass` of the view's pixels: a lossless 5/3 codestream of the whole
    image, unsigned, clipped to Bits Stored as the display path needs, with enough levels.

    A reversible codestream in JPEG 2000 or HTJ2K (the syntaxes that allow lossy ones) counts
    as lossless unless the view says Lossy Image Compression 01: a truncated 5/3 codestream
    would still match, except where its full decode was clipped."""
    ts = ds.file_meta.TransferSyntaxUID
    lossy = str(ds.get("LossyImageCompression", "") or "").strip() == "01"
    return (header.reversible and header.plain and header.components == 1 and not header.signed
            and header.levels >= levels and header.precision == _int(ds, "BitsStored")
            and (ts in J2K_LOSSLESS_SYNTAXES or not lossy))


def pillow_can_reduce(rows: int, cols: int, levels: int) -> bool:
    """Whether Pillow (13) decodes resolution level ``levels`` of a ``rows`` x ``cols`` image:
    it sizes the level as round(n / 2^levels) where OpenJPEG makes ceil(n / 2^levels), and
    refuses the codestream ("broken data stream") where the two differ (e.g. 2049 rows at level
    2); those views are decoded in full."""
    power = 1 << levels
    return all(int((n + (power >> 1)) / power) == -(-n // power) for n in (rows, cols))


def _decode_j2k_reduced(ds: Dataset, opts: DecodeOptions) -> np.ndarray | None:
    """Stored values at the resolution level the working image needs, where that level is
    exactly the :func:`reversible_low_pass` of the whole image; None: decode in full."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    levels = wavelet_levels(rows, cols, opts.working_size)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if (levels == 0 or photometric not in GREY or int(ds.get("SamplesPerPixel", 1)) != 1
            or number_of_frames(ds) != 1 or int(ds.get("PixelRepresentation", 0)) != 0
            or "PixelPaddingValue" in ds  # padding is masked at full resolution
            or "ModalityLUTSequence" in ds):  # a non-linear LUT comes before any averaging
        return None
    try:
        codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (StopIteration, ValueError, struct.error) as exc:
        raise PixelDecodeError(f"cannot read the encapsulated frame ({transfer_syntax_name(ds)}): {exc}") from exc
    header = j2k_header(codestream)
    if header is None:
        return None
    if (header.rows, header.columns) != (rows, cols):
        raise InvalidInstance(f"Rows x Columns {rows} x {cols} contradict the JPEG 2000 "
                              f"codestream's {header.rows} x {header.columns}")
    if not _low_pass_is_exact(ds, header, levels) or not pillow_can_reduce(rows, cols, levels):
        return None
    from PIL import Image  # Pillow's OpenJPEG binding can decode a resolution level

    try:
        with Image.open(io.BytesIO(codestream)) as im:
            im.reduce = levels
            im.load()
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as exc:  # let the full decoder try and report
        log.debug("reduced JPEG 2000 decoding failed, decoding in full: %s", exc)
        return None
    if arr.shape != low_pass_shape(rows, cols, levels):
        return None
    shift = arr.dtype.itemsize * 8 - header.precision  # Pillow scales to 8 or 16 bits: undo it
    if shift > 0:
        arr = arr >> shift
    return arr


def decode(ds: Dataset, opts: DecodeOptions = DecodeOptions()) -> np.ndarray:
    """The stored pixel values: (frames, rows, cols[, 3]) after :func:`check_header`.

    A lossless JPEG 2000 or HTJ2K view may come back at the resolution level its working image
    is made from (:func:`low_pass_shape`): the same integers :func:`reversible_low_pass` makes
    of the full decode.
    """
    check_header(ds, opts)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise InvalidInstance("no Transfer Syntax UID (0002,0010): the file meta information is missing")
    if opts.reduced_decode and ts in J2K_SYNTAXES:
        arr = _decode_j2k_reduced(ds, opts)
        if arr is not None:
            _check_value_range(arr, ds)
            return arr[None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            arr = ds.pixel_array
        except Exception as exc:  # pydicom and its plugins raise many types for bad or unsupported data
            raise PixelDecodeError(f"cannot decode pixel data ({transfer_syntax_name(ds)}): "
                                   f"{type(exc).__name__}: {exc}") from exc
    for w in caught:
        log.debug("pixel decoding: %s", w.message)
    arr = np.asarray(arr)
    if ts is not None and ts.is_compressed:
        _check_value_range(arr, ds)
    samples = int(ds.get("SamplesPerPixel", 1))
    frames = number_of_frames(ds)
    if frames == 1:
        arr = arr[None]
    if arr.ndim != (4 if samples == 3 else 3) or arr.shape[0] != frames:
        raise PixelDecodeError(f"decoded pixel array of shape {arr.shape} does not fit "
                               f"{frames} frame(s) of {samples} sample(s)")
    return _honour_high_bit(arr, ds)


def _check_value_range(arr: np.ndarray, ds: Dataset) -> None:
    """Decoded grey values must fit Bits Stored: a codec returns what the codestream holds."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return
    stored = int(ds.get("BitsStored", 0) or 0)
    if not stored or stored >= 32:
        return
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    amin, amax = int(arr.min()), int(arr.max())
    if amin < lo or amax > hi:
        raise InvalidInstance(
            f"decoded values {amin}..{amax} do not fit Bits Stored {stored} "
            f"({'signed' if signed else 'unsigned'}): the attributes contradict the codestream")


def _honour_high_bit(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom reads stored bits from bit 0; a legacy High Bit above Bits Stored - 1 shifts them."""
    stored, high_bit = int(ds.get("BitsStored", 0) or 0), int(ds.get("HighBit", -1) or -1)
    allocated = int(ds.BitsAllocated)
    ts = ds.file_meta.TransferSyntaxUID
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if (not stored or high_bit in (-1, stored - 1) or ts.is_compressed or allocated not in (8, 16, 32)
            or photometric.startswith("YBR")):  # YBR: pydicom's conversion to RGB is kept
        return arr
    raw = np.frombuffer(ds.PixelData, dtype=f"<u{allocated // 8}")[:arr.size]
    if ts == uid.ExplicitVRBigEndian:
        raw = raw.byteswap()
    if arr.ndim == 4 and int(ds.get("PlanarConfiguration", 0) or 0) == 1:  # R plane, G plane, B plane
        raw = raw.reshape(arr.shape[0], 3, *arr.shape[1:3]).transpose(0, 2, 3, 1)
    else:
        raw = raw.reshape(arr.shape)
    values = (raw >> (high_bit + 1 - stored)) & ((1 << stored) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        values = values.astype(np.int64)
        values = np.where(values >= 1 << (stored - 1), values - (1 << stored), values)
    return values.astype(np.int32)


# -- the grey display pipeline (pure) -----------------------------------------------------------


def padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """True where Pixel Padding Value (up to Pixel Padding Range Limit) marks no image."""
    if "PixelPaddingValue" not in ds:
        return None
    a = int(ds.PixelPaddingValue)
    b = int(ds.get("PixelPaddingRangeLimit", a))
    lo, hi = min(a, b), max(a, b)
    mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def working_scale(rows: int, cols: int, working_size: int) -> float:
    """The factor (<= 1) that brings the shorter side down to ``working_size``."""
    if working_size <= 0 or min(rows, cols) <= working_size:
        return 1.0
    return working_size / min(rows, cols)


def working_shape(rows: int, cols: int, working_size: int) -> tuple[int, int]:
    """(height, width) of a ``rows`` x ``cols`` view at the working resolution."""
    scale = working_scale(rows, cols, working_size)
    if scale >= 1.0:
        return rows, cols
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def downscale(values: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return values
    h, w = values.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(values, size, interpolation=cv2.INTER_AREA)


def working_values(stored: np.ndarray, ds: Dataset, opts: DecodeOptions, level: int = 0) -> np.ndarray:
    """One grey frame's stored values (unpadded, linear Modality LUT) at the working resolution,
    float32: the :func:`reversible_low_pass` of :func:`wavelet_levels` levels (what a lossless
    JPEG 2000 codestream decodes to at that resolution level), then area-averaged
    (``cv2.INTER_AREA``) to :func:`working_shape`.

    ``level`` 0: ``stored`` is the whole frame; else it is that low-pass already (:func:`decode`
    at a resolution level of a ``ds.Rows`` x ``ds.Columns`` view): both give the same array.
    """
    if level == 0:
        rows, cols = stored.shape
        levels = wavelet_levels(rows, cols, opts.working_size)
        if levels:
            stored = reversible_low_pass(stored, levels, bits=_int(ds, "BitsStored", ds.get("BitsAllocated")),
                                         signed=int(ds.get("PixelRepresentation", 0)) == 1)
    else:
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
        levels = wavelet_levels(rows, cols, opts.working_size)
        if level != levels or stored.shape != low_pass_shape(rows, cols, levels):
            raise PixelDecodeError(f"decoded {stored.shape[0]} x {stored.shape[1]} pixels at resolution "
                                   f"level {level}, not the {levels} Rows x Columns {rows} x {cols} need")
    values = stored.astype(np.float32)
    h, w = working_shape(rows, cols, opts.working_size)
    if values.shape == (h, w):
        return values
    return cv2.resize(values, (w, h), interpolation=cv2.INTER_AREA)


def resolution_level(frame_shape: tuple[int, ...], ds: Dataset, opts: DecodeOptions) -> int:
    """0 when :func:`decode` gave the whole frame, else the resolution level it decoded."""
    rows, cols = _int(ds, "Rows", frame_shape[0]), _int(ds, "Columns", frame_shape[1])
    if tuple(frame_shape[:2]) == (rows, cols):
        return 0
    return wavelet_levels(rows, cols, opts.working_size)


def _downscale_masked(values: np.ndarray, mask: np.ndarray | None,
                      scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Area-downscale the values of the non-padding pixels only; a pixel that is mostly padding
    stays padding, and padding never bleeds into its neighbours."""
    if scale >= 1.0:
        return values, mask
    if mask is None:
        return downscale(values, scale), None
    keep = (~mask).astype(np.float32)
    weight = downscale(keep, scale)
    total = downscale(values * keep, scale)
    averaged = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
    return averaged, weight < 0.5


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI window to [0, 1] by PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), .3.1 (SIGMOID)."""
    x = values.astype(np.float32, copy=False)
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for SIGMOID")
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0 for LINEAR_EXACT")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if function != "LINEAR":
        raise ValueError(f"VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    if width < 1:
        raise ValueError(f"window width {width} must be >= 1 for LINEAR")
    if width == 1:  # the standard's limit case: a threshold at center - 0.5
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, str):
        value = value[0]
    return float(value)


def voi(values: np.ndarray, ds: Dataset, mask: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Modality values -> [0, 1] by the view's first VOI, else a percentile window; and which."""
    if "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter not in (None, "") \
            and ds.WindowWidth not in (None, ""):
        try:
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
            return window(values, center, width, function), f"window {center:g}/{width:g} {function}"
        except (ValueError, TypeError, IndexError) as exc:
            raise InvalidInstance(f"the VOI window (Window Center/Width, VOI LUT Function) "
                                  f"cannot be applied: {exc}") from exc
    elif ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        try:
            out, bits = lut_lookup(values, item, signed_input=_modality_can_be_negative(ds),
                                   big_endian=_big_endian(ds))
        except (AttributeError, ValueError, TypeError, IndexError) as exc:
            raise InvalidInstance(f"the VOI LUT Sequence cannot be applied: {exc}") from exc
        return np.clip(out / float((1 << bits) - 1), 0.0, 1.0), "VOI LUT sequence"
    anatomy = values[~mask] if mask is not None else values.reshape(-1)
    if anatomy.size == 0:
        anatomy = values.reshape(-1)
    lo, hi = (float(v) for v in np.percentile(anatomy, PERCENTILE_WINDOW))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0), "percentile window"


def lut_lookup(values: np.ndarray, item: Dataset, *, signed_input: bool = False,
               big_endian: bool = False) -> tuple[np.ndarray, int]:
    """A Modality or VOI LUT Sequence item applied to ``values``: (float32 output, its bits).

    PS3.3 C.11.1.1.1 / C.11.2.1.1: LUT Descriptor [entries (0 = 65536), first value mapped, bits];
    an input below the first value mapped takes the first entry, above the last the last one.
    The descriptor's VR is US or SS depending on the input: the values are taken as unsigned
    16-bit, the first value mapped as signed where the input can be negative
    (``signed_input``). LUT Data as OW bytes is read in the file's byte order.
    Done here rather than by pydicom 3.0's apply_voi, which indexes through an array of the
    LUT's own data type, so inputs more than 255 (8-bit) or 65535 (16-bit) past the first value
    mapped wrap round instead of clamping.
    """
    with warnings.catch_warnings():  # pydicom warns when US/SS resolves against the values: we
        warnings.simplefilter("ignore")  # take them as 16-bit words and decide the sign below
        descriptor = list(item.LUTDescriptor)
    entries, first, bits = (int(v) & 0xFFFF for v in descriptor)
    entries = entries or 65536
    if signed_input and first >= 0x8000:  # the first value mapped is SS when the input is signed
        first -= 0x10000
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words in the file's byte order
        table = np.frombuffer(data, dtype=(">u2" if big_endian else "<u2")
                              if bits > 8 or len(data) >= 2 * entries else "u1")
    else:
        table = np.asarray(data if isinstance(data, (list, tuple)) or hasattr(data, "__len__")
                           else [data], dtype=np.int64)
    table = table[:entries].astype(np.float32)
    if table.size == 0 or not 1 <= bits <= 16:
        raise ValueError(f"LUT Descriptor {list(item.LUTDescriptor)} with {table.size} entries")
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, table.size - 1)
    return table[index], bits


def _big_endian(ds: Dataset) -> bool:
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) == uid.ExplicitVRBigEndian


def _modality_can_be_negative(ds: Dataset) -> bool:
    """Whether the Modality LUT's output (the VOI LUT's input) can be below zero."""
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return True
    if "ModalityLUTSequence" in ds:
        return False
    try:
        return float(ds.get("RescaleIntercept", 0) or 0) < 0 or float(ds.get("RescaleSlope", 1) or 1) < 0
    except (TypeError, ValueError):
        return False


def inverted(ds: Dataset) -> bool:
    """MONOCHROME1, or a Presentation LUT Shape of INVERSE: low values are to be shown white.

    DX requires INVERSE exactly when MONOCHROME1, so the two say the same thing once, not twice.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def grey_frame_to_display(stored: np.ndarray, ds: Dataset, opts: DecodeOptions,
                          level: int = 0) -> np.ndarray:
    """Stored values of one grey frame -> uint8 at the working resolution, bone bright.

    ``level``: the resolution level ``stored`` was decoded at (:func:`resolution_level`)."""
    if level:  # a lossless codestream's resolution level: unpadded, no LUT (_decode_j2k_reduced)
        values = apply_modality_lut(working_values(stored, ds, opts, level), ds).astype(np.float32)
        return _shown(values, ds, None)
    mask = padding_mask(stored, ds)
    scale = working_scale(*stored.shape, opts.working_size)
    if "ModalityLUTSequence" in ds:  # a non-linear LUT: apply it before averaging pixels
        try:
            values, _bits = lut_lookup(stored, ds.ModalityLUTSequence[0],
                                       signed_input=int(ds.get("PixelRepresentation", 0)) == 1,
                                       big_endian=_big_endian(ds))
        except (AttributeError, ValueError, TypeError, IndexError) as exc:
            raise InvalidInstance(f"the Modality LUT Sequence cannot be applied: {exc}") from exc
        values, mask = _downscale_masked(values, mask, scale)
    elif mask is not None:  # padding: averaged over the anatomy only, at full resolution
        values, mask = _downscale_masked(stored.astype(np.float32), mask, scale)
        values = apply_modality_lut(values, ds).astype(np.float32)
    else:
        values = apply_modality_lut(working_values(stored, ds, opts), ds).astype(np.float32)
    return _shown(values, ds, mask)


def _shown(values: np.ndarray, ds: Dataset, mask: np.ndarray | None) -> np.ndarray:
    """Modality values at the working resolution -> uint8: VOI, inversion, padding black."""
    shown, _how = voi(values, ds, mask)
    if inverted(ds):
        shown = 1.0 - shown
    if mask is not None:
        shown[mask] = 0.0
    return (shown * 255.0 + 0.5).astype(np.uint8)


def colour_frame_to_display(frame: np.ndarray, ds: Dataset, opts: DecodeOptions) -> np.ndarray:
    """One colour frame (RGB after pydicom's conversion, or palette indices) -> uint8 grey."""
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric == "PALETTE COLOR":
        try:
            frame = apply_color_lut(frame, ds)
        except (AttributeError, ValueError, IndexError) as exc:
            raise InvalidInstance(f"the palette colour lookup table cannot be applied: {exc}") from exc
    top = float((1 << int(ds.BitsStored if photometric != "PALETTE COLOR" else
                        ds.RedPaletteColorLookupTableDescriptor[2])) - 1) if frame.dtype != np.uint8 else 255.0
    rgb = frame.astype(np.float32) / top
    grey = cv2.cvtColor(np.clip(rgb, 0, 1), cv2.COLOR_RGB2GRAY)
    grey = downscale(grey, working_scale(*grey.shape, opts.working_size))
    return (grey * 255.0 + 0.5).astype(np.uint8)


def display_frames(ds: Dataset, opts: DecodeOptions = DecodeOptions()) -> list[np.ndarray]:
    """Decode and show every frame: uint8 H x W at the working resolution, bone bright."""
    arr = decode(ds, opts)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    out = []
    for frame in arr:
        try:
            if photometric in GREY:
                out.append(grey_frame_to_display(frame, ds, opts, resolution_level(frame.shape, ds, opts)))
            else:
                out.append(colour_frame_to_display(frame, ds, opts))
        except (TypeError, ValueError, AttributeError, KeyError, cv2.error) as exc:
            raise InvalidInstance(f"the display attributes cannot be applied: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return out


def to_display(ds: Dataset, opts: DecodeOptions = DecodeOptions()) -> np.ndarray:
    """The first (for a single-frame image, the only) frame as shown: uint8, bone bright."""
    return display_frames(ds, opts)[0]


# -- preparation (pure) -------------------------------------------------------------------------


def _strip_uniform_borders(grey: np.ndarray, max_fraction: float = 0.35) -> tuple[int, int, int, int]:
    """The box left after peeling rows and columns without structure (collimation, padding).

    A side's outermost line is peeled while it is dark (padding, exposed background) or bright
    (collimation) and its standard deviation is under a quarter of a typical line's (at least 3
    grey levels), side after side until none moves, so black padding on top and collimation on
    the sides both go even where they meet. Mid-grey lines (soft tissue) are never peeled. At
    most ``max_fraction`` of the view is peeled from any side.
    """
    h, w = grey.shape
    g = cv2.GaussianBlur(grey, (3, 3), 0).astype(np.float32)
    typical = float(np.median(np.concatenate([g.std(axis=1), g.std(axis=0)])))
    threshold = max(3.0, 0.25 * typical)
    y0, y1, x0, x1 = 0, h, 0, w
    ymax, xmax = int(h * max_fraction), int(w * max_fraction)

    def border(line: np.ndarray) -> bool:
        mean = float(line.mean())
        return (mean < PEEL_DARK or mean > BORDER_BRIGHT) and float(line.std()) < threshold

    moved = True
    while moved:
        moved = False
        if y0 < ymax and border(g[y0, x0:x1]):
            y0, moved = y0 + 1, True
        if h - y1 < ymax and border(g[y1 - 1, x0:x1]):
            y1, moved = y1 - 1, True
        if x0 < xmax and border(g[y0:y1, x0]):
            x0, moved = x0 + 1, True
        if w - x1 < xmax and border(g[y0:y1, x1 - 1]):
            x1, moved = x1 - 1, True
    return y0, y1, x0, x1


def _collimation(blurred: np.ndarray, side_share: float = 0.25) -> np.ndarray:
    """Bright, locally flat regions that run along a good part of the view's edge.

    Collimation that is not aligned with the image axes (the usual case) makes no uniform row
    or column to peel; it is a bright flat band along the edges instead. A bone that enters the
    view from an edge is bright and flat too, but touches the edge only over its width.
    """
    g = blurred.astype(np.float32)
    mean = cv2.blur(g, (9, 9))
    local_sd = np.sqrt(np.maximum(cv2.blur(g * g, (9, 9)) - mean * mean, 0))
    flat = ((g > BORDER_BRIGHT) & (local_sd < 6)).astype(np.uint8)
    n, labels = cv2.connectedComponents(flat, connectivity=8)
    if n <= 1:
        return np.zeros(g.shape, bool)
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    touching = np.bincount(rim, minlength=n)
    wide = np.nonzero(touching >= side_share * min(g.shape))[0]
    wide = wide[wide != 0]
    if wide.size == 0:
        return np.zeros(g.shape, bool)
    # with the rim it blurs into the view: that is no anatomy either
    band = np.isin(labels, wide).astype(np.uint8)
    return cv2.dilate(band, np.ones((15, 15), np.uint8)).astype(bool)


def _content_mask(inner: np.ndarray) -> np.ndarray:
    """What is anatomy in a view without its borders: not dark background, not collimation, or edges.

    Bone is bright and the exposed background dark in a displayed view. Otsu's threshold splits
    the view (collimation left out) in two; where the darker class is dark (under
    ``BORDER_DARK``), a real share of the view and well apart from the brighter class (an
    exposed background), the brighter class is content, else everything is: a view without a
    clear background is not cut on a threshold that noise could move. Canny's edges of the
    CLAHE-equalised view (thresholds from the median), joined by a morphological close, are
    content too: faint soft tissue has edges. Collimation bands (:func:`_collimation`) are
    never content.
    """
    blurred = cv2.GaussianBlur(inner, (5, 5), 0)
    collimation = _collimation(blurred)
    content = np.ones(inner.shape, bool)
    sample = blurred[~collimation]
    if sample.size:
        threshold, _ = cv2.threshold(sample.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        dark = sample <= threshold
        if 0.05 < float(dark.mean()) < 0.95:
            lo, hi = float(sample[dark].mean()), float(sample[~dark].mean())
            if lo < BORDER_DARK and hi - lo > 40:
                content = blurred > threshold
    equalised = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(inner)
    smooth = cv2.GaussianBlur(equalised, (5, 5), 0)
    median = float(np.median(smooth))
    edges = cv2.Canny(smooth, int(max(0, 0.67 * median)), int(min(255, 1.33 * median)) or 1)
    k = max(3, int(round(min(inner.shape) * 0.03)) | 1)
    closed = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return (content | closed.astype(bool)) & ~collimation


def anatomy_box(grey: np.ndarray, *, min_fraction: float = 0.05,
                keep_fraction: float = 0.15, margin: float = 0.03) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the bounding box of the anatomy in a displayed view.

    Borders without structure (collimation, padding) are peeled first; in what is left, the
    content (:func:`_content_mask`: not dark background, or edges) is opened so thin strokes
    (burned-in text, markers, lines) fall apart, and the connected components at least
    ``keep_fraction`` of the largest one's area make the box, with a ``margin``. A view with
    no structure, or a box under ``min_fraction`` of the view, gives the whole view: when in
    doubt, nothing is cut.
    """
    h, w = grey.shape
    if float(grey.std()) < 2.0:
        return 0, h, 0, w
    by0, by1, bx0, bx1 = _strip_uniform_borders(grey)
    inner = np.ascontiguousarray(grey[by0:by1, bx0:bx1])
    if min(inner.shape) < 16:
        return 0, h, 0, w
    content = _content_mask(inner).astype(np.uint8)
    k = max(3, int(round(min(inner.shape) * 0.02)) | 1)
    opened = cv2.morphologyEx(content, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        return 0, h, 0, w
    comps = stats[1:]
    areas = comps[:, cv2.CC_STAT_AREA]
    keep = comps[areas >= keep_fraction * areas.max()]
    x0 = int(keep[:, cv2.CC_STAT_LEFT].min())
    y0 = int(keep[:, cv2.CC_STAT_TOP].min())
    x1 = int((keep[:, cv2.CC_STAT_LEFT] + keep[:, cv2.CC_STAT_WIDTH]).max())
    y1 = int((keep[:, cv2.CC_STAT_TOP] + keep[:, cv2.CC_STAT_HEIGHT]).max())
    my, mx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
    y0, y1 = max(0, y0 - my) + by0, min(inner.shape[0], y1 + my) + by0
    x0, x1 = max(0, x0 - mx) + bx0, min(inner.shape[1], x1 + mx) + bx0
    if (y1 - y0) * (x1 - x0) < min_fraction * h * w:
        return 0, h, 0, w
    return y0, y1, x0, x1


def resize(grey: np.ndarray, size: int, mode: ResizeMode) -> np.ndarray:
    """To size x size: squashed (the MURA recipe) or aspect-preserving, centred, padded black."""
    h, w = grey.shape
    interp = cv2.INTER_AREA if max(h, w) >= size else cv2.INTER_LINEAR
    if mode == "squash":
        return cv2.resize(grey, (size, size), interpolation=interp)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    inner = cv2.resize(grey, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), dtype=grey.dtype)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = inner
    return out


def normalise(grey: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 size x size -> float32 3 x size x size, mean/std per channel."""
    x = grey.astype(np.float32) / 255.0
    mean = np.asarray(prep.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(prep.std, dtype=np.float32)[:, None, None]
    return ((np.broadcast_to(x, (3, *x.shape)) - mean) / std).astype(np.float32)


def to_model_input(grey: np.ndarray, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """A displayed view (uint8 H x W) -> the model's input, by ``prep``'s steps."""
    return to_model_input_with_crop(grey, prep)[0]


def to_model_input_with_crop(grey: np.ndarray, prep: Preprocessing = Preprocessing()
                             ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`to_model_input` and the crop it made, (y0, y1, x0, x1) on ``grey`` (the whole view
    without ``prep.crop``): with :class:`dicom_io.geometry.ViewGeometry` it maps a heatmap back."""
    crop = (0, grey.shape[0], 0, grey.shape[1])
    if prep.crop:
        crop = anatomy_box(grey)
        y0, y1, x0, x1 = crop
        grey = grey[y0:y1, x0:x1]
    return _finish_model_input(grey, prep), tuple(int(v) for v in crop)  # type: ignore[return-value]


def _finish_model_input(grey: np.ndarray, prep: Preprocessing) -> np.ndarray:
    if prep.clahe:
        grid = (prep.clahe_tile_grid, prep.clahe_tile_grid)
        grey = cv2.createCLAHE(clipLimit=prep.clahe_clip_limit, tileGridSize=grid).apply(
            np.ascontiguousarray(grey))
    return normalise(resize(grey, prep.size, prep.resize), prep)


def prepare_dataset(ds: Dataset, prep: Preprocessing = Preprocessing(),
                    opts: DecodeOptions = DecodeOptions()) -> np.ndarray:
    """Every frame of a dataset as model input: float32 (frames, 3, size, size)."""
    return prepare_dataset_mapped(ds, prep, opts)[0]


def prepare_dataset_mapped(ds: Dataset, prep: Preprocessing = Preprocessing(),
                           opts: DecodeOptions = DecodeOptions()
                           ) -> tuple[np.ndarray, list[ViewGeometry], list[np.ndarray]]:
    """:func:`prepare_dataset`, each frame's :class:`ViewGeometry` and each frame as displayed
    (uint8 at the working resolution): what a heatmap needs to be drawn on the view."""
    displays = display_frames(ds, opts)
    tensors, geometry = [], []
    for grey in displays:
        x, crop = to_model_input_with_crop(grey, prep)
        tensors.append(x)
        geometry.append(ViewGeometry(
            rows=_int(ds, "Rows", grey.shape[0]), columns=_int(ds, "Columns", grey.shape[1]),
            display_height=grey.shape[0], display_width=grey.shape[1], crop=crop,
            size=prep.size, resize=prep.resize))
    return np.stack(tensors), geometry, displays


def prepare_frames(path: Path | str, prep: Preprocessing = Preprocessing(),
                   opts: DecodeOptions = DecodeOptions()) -> np.ndarray:
    """Read, decode and prepare a stored view: (frames, 3, size, size); raises a dicom_io error."""
    return prepare_dataset(read_dataset(path), prep, opts)


def prepare_file(path: Path | str, prep: Preprocessing = Preprocessing(),
                 opts: DecodeOptions = DecodeOptions()) -> np.ndarray:
    """A single-frame view as model input (3, size, size); raises a dicom_io error saying why not."""
    return prepare_frames(path, prep, opts)[0]
