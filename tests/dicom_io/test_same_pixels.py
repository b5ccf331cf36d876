"""The same pixels get the same score, whatever their encoding (issue 18, item 1).

Generated radiographs of realistic size (``training.phantoms`` anatomy, upscaled with detector
noise added at full resolution; odd and square sizes, 8, 12 and 14 bits stored, a window or
none) are written in every encoding the receiver accepts, by the encoders sites' images come
from (pydicom and pylibjpeg-openjpeg, DCMTK ``dcmconv``/``dcmcrle``/``dcmcjpeg``/``dcmcjpls``,
OpenJPH ``ojph_compress``), and prepared with the **default** ``DecodeOptions``:

* a lossless encoding gives exactly the tensor of the uncompressed file (``np.array_equal``),
  JPEG 2000 and HTJ2K included, however the codestream is laid out (RPCL, fewer decomposition
  levels than the working size needs, tiles);
* a lossy file scores within :data:`MAX_DELTA_P` of an uncompressed file holding its own
  decoded pixels (the reproduction in the issue), with the shipped demo model.

``test_reversible_low_pass_is_what_a_decoder_gives`` pins the reason this holds with reduced
decoding: the working image is defined from JPEG 2000's reversible 5/3 wavelet low-pass, which
a lossless codestream decodes to exactly at its resolution levels.
"""
from __future__ import annotations

import copy
import io
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from dicom_io.pixels import (
    DecodeOptions,
    Preprocessing,
    decode,
    prepare_file,
    read_dataset,
)
from dicom_io.synthetic import StudySpec, make_instance
from tests.dicom_io.corpus import (
    OPENJPH,
    PYDICOM,
    Encoding,
    missing_encoder,
    write_encoding,
)
from training.phantoms import radiograph, render_view

#: The issue's bound on view probabilities of two encodings of the same pixels.
MAX_DELTA_P = 0.002

DEFAULT = DecodeOptions()
PREP = Preprocessing()
DEMO = Path(__file__).resolve().parents[2] / "models" / "radtriage-demo.pt"

_OPENJPEG = (("encoding_plugin", "pylibjpeg"),)


#: name -> how it is generated: study type, render size, upscale, final Rows x Columns (the
#: phantom centred on a canvas of the background's value, or cut), bits stored, modality,
#: photometric interpretation, window (False: the percentile window)
IMAGES: dict[str, tuple] = {
    # 1917 x 1103: odd sizes, one resolution level (the shorter side halves once to >= 512)
    "wrist-12bit": ("WRIST", 640, 3, (1917, 1103), 12, "CR", "MONOCHROME2", True),
    # 2050 x 2048: two resolution levels; MONOCHROME1, no window
    "hand-14bit": ("HAND", 704, 3, (2050, 2048), 14, "DX", "MONOCHROME1", False),
    # 1300 x 1100, 8 bits: what JPEG baseline carries (libjpeg's 1/2 DCT scale applies)
    "finger-8bit": ("FINGER", 512, 2, (1300, 1100), 8, "CR", "MONOCHROME2", True),
}

LOSSLESS: tuple[Encoding, ...] = (
    Encoding(uid.ImplicitVRLittleEndian, "ImplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.DeflatedExplicitVRLittleEndian, "DeflatedExplicitVRLittleEndian", True, PYDICOM),
    Encoding(uid.ExplicitVRBigEndian, "ExplicitVRBigEndian", True, "dcmconv", ("+tb",)),
    Encoding(uid.RLELossless, "RLELossless", True, "dcmcrle"),
    Encoding(uid.JPEGLossless, "JPEGLossless", True, "dcmcjpeg", ("+el",)),
    Encoding(uid.JPEGLosslessSV1, "JPEGLosslessSV1", True, "dcmcjpeg", ("+e1",)),
    Encoding(uid.JPEGLSLossless, "JPEGLSLossless", True, "dcmcjpls", ("+el",)),
    Encoding(uid.JPEG2000Lossless, "JPEG2000Lossless", True, PYDICOM, compress_kwargs=_OPENJPEG),
    Encoding(uid.HTJ2KLossless, "HTJ2KLossless", True, OPENJPH, ("-reversible", "true", "-prog_order", "LRCP")),
    Encoding(uid.HTJ2KLosslessRPCL, "HTJ2KLosslessRPCL", True, OPENJPH, ("-reversible", "true")),
    # a reversible codestream in the syntax that also allows lossy ones, not marked lossy
    Encoding(uid.HTJ2K, "HTJ2K-reversible", True, OPENJPH, ("-reversible", "true")),
    # one decomposition level: fewer than the working size needs for the 2k x 2k image
    Encoding(uid.HTJ2KLossless, "HTJ2KLossless-1-level", True, OPENJPH,
             ("-reversible", "true", "-num_decomps", "1")),
    # tiles and an odd image offset: the resolution levels no longer are the whole image's
    Encoding(uid.HTJ2KLossless, "HTJ2KLossless-tiles", True, OPENJPH,
             ("-reversible", "true", "-tile_size", "{512,768}")),
)

LOSSY: tuple[Encoding, ...] = (
    Encoding(uid.JPEG2000, "JPEG2000", False, PYDICOM, compress_kwargs=_OPENJPEG + (("j2k_cr", [12]),)),
    Encoding(uid.HTJ2K, "HTJ2K", False, OPENJPH, ("-qstep", "0.004")),
    Encoding(uid.JPEGBaseline8Bit, "JPEGBaseline8Bit", False, "dcmcjpeg", ("+eb", "+sr"), max_bits_stored=8),
    Encoding(uid.JPEGExtended12Bit, "JPEGExtended12Bit", False, "dcmcjpeg", ("+ee", "+sr"),
             max_bits_stored=12),
    Encoding(uid.JPEGLSNearLossless, "JPEGLSNearLossless", False, "dcmcjpls", ("+en", "+md", "3")),
)


def _needed_tool(enc: Encoding) -> str | None:
    if enc.tool in (PYDICOM, OPENJPH):
        return missing_encoder(enc)
    return None if shutil.which(enc.tool) else f"{enc.tool} is not installed (Debian package dcmtk)"


def _params(encodings: tuple[Encoding, ...], only_8bit: bool = False) -> list:  # type: ignore[type-arg]
    out = []
    for image, spec in IMAGES.items():
        for enc in encodings:
            if spec[4] > enc.max_bits_stored or (only_8bit and spec[4] != 8):
                continue
            marks = [pytest.mark.integration] if enc.tool != PYDICOM else []
            out.append(pytest.param(image, enc, id=f"{image}-{enc.name}", marks=marks))
    return out


# -- the images ------------------------------------------------------------------------------------


def phantom_pixels(study_type: str, render: int, scale: int, shape: tuple[int, int], bits: int,
                   seed: int) -> np.ndarray:
    """A phantom radiograph as stored values: rendered at ``render`` pixels, upscaled ``scale``
    times, with noise added at full resolution (the fine detail where a wavelet level and an
    area average differ), on a ``shape`` canvas of its own background."""
    rng = np.random.default_rng([18, seed])
    attenuation, _boxes = render_view(study_type, rng, ("fracture",), size=render)
    shown = radiograph(attenuation, rng, marker="L", text=f"{study_type} PA")
    big = cv2.resize(shown, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    big = big + cv2.GaussianBlur(rng.normal(0, 0.012, big.shape).astype(np.float32), (0, 0), 0.6)
    canvas = np.full(shape, float(np.percentile(big, 1)), np.float32)
    h, w = min(shape[0], big.shape[0]), min(shape[1], big.shape[1])
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    bt, bl = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    canvas[top:top + h, left:left + w] = big[bt:bt + h, bl:bl + w]
    maxval = (1 << bits) - 1
    return np.clip(np.round((0.04 + 0.9 * canvas) * maxval), 0, maxval).astype(np.uint16)


def image_dataset(name: str) -> Dataset:
    """The uncompressed source of ``name`` (:data:`IMAGES`), with file meta."""
    study_type, render, scale, shape, bits, modality, photometric, window = IMAGES[name]
    seed = list(IMAGES).index(name)
    values = phantom_pixels(study_type, render, scale, shape, bits, seed)
    maxval = (1 << bits) - 1
    if photometric == "MONOCHROME1":
        values = (maxval - values).astype(np.uint16)
    ds = make_instance(StudySpec(views=1, rows=shape[0], columns=shape[1], bits_stored=bits,
                                 modality=modality, photometric=photometric, body_part=study_type,
                                 seed=seed), 0)
    if bits == 8:
        ds.BitsAllocated, ds.HighBit = 8, 7
        ds.PixelData = values.astype(np.uint8).tobytes()
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = values.tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = f"{0.5 * maxval:.1f}", f"{0.8 * maxval:.1f}"
    else:
        del ds.WindowCenter, ds.WindowWidth
    return ds


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Encoding | None], Path]:
    """(image, encoding) -> its file, written once; encoding None: the uncompressed source."""
    root = tmp_path_factory.mktemp("same-pixels")
    sources: dict[str, tuple[Dataset, Path]] = {}
    written: dict[tuple[str, str], Path] = {}

    def get(image: str, enc: Encoding | None) -> Path:
        if image not in sources:
            ds = image_dataset(image)
            path = root / f"{image}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sources[image] = (ds, path)
        ds, source = sources[image]
        if enc is None:
            return source
        why = _needed_tool(enc)
        if why:
            pytest.skip(why)
        key = (image, enc.name)
        if key not in written:
            written[key] = write_encoding(ds, enc, root / f"{image}-{enc.name}.dcm", source=source)
        return written[key]

    return get


@pytest.fixture(scope="module")
def tensor() -> Callable[[Path], np.ndarray]:
    cache: dict[Path, np.ndarray] = {}

    def get(path: Path) -> np.ndarray:
        if path not in cache:
            cache[path] = prepare_file(path, PREP, DEFAULT)
        return cache[path]

    return get


@pytest.fixture(scope="module")
def demo_scorer():  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from inference.model import Scorer, load_checkpoint

    model, card = load_checkpoint(DEMO)
    return Scorer(model, card, device=torch.device("cpu"), batch_size=8)


def decoded_copy(path: Path, out: Path) -> Path:
    """An uncompressed file holding what ``path`` decodes to (fully, by pydicom): the same pixels."""
    ds = pydicom.dcmread(path)
    values = ds.pixel_array
    copy_ = copy.deepcopy(ds)
    copy_.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    eight = int(ds.BitsAllocated) == 8
    copy_.PixelData = values.astype(np.uint8 if eight else np.uint16).tobytes()
    copy_["PixelData"].VR = "OB" if eight else "OW"
    copy_.save_as(out, enforce_file_format=True)
    return out


# -- lossless: the identical tensor ----------------------------------------------------------------


@pytest.mark.parametrize(("image", "enc"), _params(LOSSLESS))
def test_lossless_encodings_give_the_identical_tensor(files, tensor, image: str, enc: Encoding) -> None:  # type: ignore[no-untyped-def]
    path = files(image, enc)
    assert np.array_equal(pydicom.dcmread(path).pixel_array, pydicom.dcmread(files(image, None)).pixel_array)
    x, reference = tensor(path), tensor(files(image, None))
    assert np.array_equal(x, reference), (
        f"{enc.name}: max |diff| {np.abs(x - reference).max():.4f} against the uncompressed file")


@pytest.mark.parametrize("name", ["JPEG2000Lossless", "HTJ2KLossless", "HTJ2KLosslessRPCL"])
def test_a_lossless_j2k_view_is_decoded_at_a_resolution_level(files, name: str) -> None:  # type: ignore[no-untyped-def]
    """The identical tensor does not cost the speed: the 2k x 2k view decodes at 1/4 size."""
    enc = next(e for e in LOSSLESS if e.name == name)
    ds = read_dataset(files("hand-14bit", enc))
    assert decode(ds, DEFAULT).shape == (1, 513, 512)  # ceil(2050 / 4) x 2048 / 4
    assert decode(ds, DecodeOptions(reduced_decode=False)).shape == (1, 2050, 2048)


# -- lossy: the same pixels stored uncompressed score the same -------------------------------------


@pytest.mark.parametrize(("image", "enc"), _params(LOSSY))
def test_a_lossy_file_scores_as_its_decoded_pixels_do(files, tensor, demo_scorer, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      image: str, enc: Encoding) -> None:
    lossy = files(image, enc)
    same = decoded_copy(lossy, tmp_path / "decoded.dcm")
    p_lossy, p_same = demo_scorer.score([tensor(lossy), tensor(same)])
    assert abs(p_lossy - p_same) <= MAX_DELTA_P, (
        f"{enc.name}: {p_lossy:.4f} against {p_same:.4f} for the same pixels uncompressed")


# -- why: the reversible wavelet's low-pass is what a lossless codestream decodes to -----------------


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (7, 5), (1, 9), (5, 64), (33, 18), (301, 515),
                                   (1030, 70)])
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_reversible_low_pass_is_what_a_decoder_gives(tmp_path: Path, shape: tuple[int, int],
                                                     bits: int) -> None:
    """OpenJPEG (through Pillow) at every resolution level of an OpenJPEG- and an OpenJPH-made
    lossless codestream of random values (the worst case for rounding) with saturated corners
    (clipping), wherever Pillow can decode that level (:func:`pillow_can_reduce`)."""
    from PIL import Image

    from dicom_io.pixels import j2k_header, pillow_can_reduce, reversible_low_pass

    rng = np.random.default_rng(bits * 1000 + shape[0])
    values = rng.integers(0, 1 << bits, shape, dtype=np.uint16)
    values[: shape[0] // 2, : shape[1] // 3] = (1 << bits) - 1
    values[shape[0] // 2:, shape[1] // 2:] = 0
    ds = make_instance(StudySpec(views=1, rows=shape[0], columns=shape[1], bits_stored=bits), 0)
    if bits == 8:
        ds.BitsAllocated, ds.HighBit = 8, 7
        ds.PixelData = values.astype(np.uint8).tobytes()
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = values.tobytes()
    encoders = [Encoding(uid.HTJ2KLossless, "openjph", True, OPENJPH, ("-reversible", "true"))]
    if min(shape) >= 32:  # OpenJPEG's encoder wants 2^5 pixels for its 5 levels
        encoders.append(Encoding(uid.JPEG2000Lossless, "openjpeg", True, PYDICOM,
                                 compress_kwargs=_OPENJPEG))
    compared = 0
    for enc in encoders:
        if missing_encoder(enc):
            continue
        path = write_encoding(ds, enc, tmp_path / f"{enc.name}.dcm")
        codestream = next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
        header = j2k_header(codestream)
        assert header is not None and header.reversible and header.levels == 5
        for level in range(header.levels + 1):
            if min(shape) >> level == 0 or not pillow_can_reduce(*shape, level):
                continue
            with Image.open(io.BytesIO(codestream)) as im:
                im.reduce = level
                im.load()
                decoded = np.asarray(im).astype(np.int64) >> (16 - bits if im.mode == "I;16" else 0)
            ours = reversible_low_pass(values, level, bits=bits, signed=False)
            assert np.array_equal(ours, decoded), (enc.name, level)
            compared += 1
    if not compared:
        pytest.skip("no JPEG 2000 encoder is installed")
