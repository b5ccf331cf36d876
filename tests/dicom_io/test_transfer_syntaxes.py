"""dicom_io.pixels decodes every transfer syntax the receiver accepts, to the same tensor.

One synthetic radiograph per source is written in every transfer syntax (tests/dicom_io/corpus.py:
pydicom for what it encodes, DCMTK for big endian, JPEG and JPEG-LS) and prepared by
``prepare_file``. Two sources: a 12-bit MONOCHROME1 CR large enough (1280 x 1100) that the default
``DecodeOptions`` decode lossless JPEG 2000 one resolution level down (to the same tensor), and a small non-square 8-bit DX
(240 x 320) for the processes that need 8 bits (JPEG baseline).

Entries whose encoder is a DCMTK tool are marked ``integration``; HTJ2K is skipped while no
installed encoder can write it (corpus.missing_encoder says which).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import HTJ2KLossless, JPEG2000Lossless, UID

from dicom_io.errors import PixelDecodeError
from dicom_io.pixels import DecodeOptions, Preprocessing, decode, prepare_file, read_dataset
from dicom_io.synthetic import StudySpec
from tests.dicom_io.corpus import (
    BY_UID,
    ENCODINGS,
    REFERENCE,
    Encoding,
    build_corpus,
    corpus_entries,
    missing_encoder,
    source_instance,
    truncated_copy,
)

SOURCES: dict[str, StudySpec] = {
    "12bit": StudySpec(views=1, rows=1280, columns=1100, bits_stored=12, modality="CR",
                       photometric="MONOCHROME1", seed=11),
    "8bit": StudySpec(views=1, rows=240, columns=320, bits_stored=8, modality="DX", seed=12),
}

PREP = Preprocessing()
FULL = DecodeOptions(reduced_decode=False)
DEFAULT = DecodeOptions()
OPTIONS = {"full": FULL, "default": DEFAULT}

#: Lossy entries vs. the lossless reference: mean |difference| of the shown image (0..1), about
#: three times what was measured (8-bit source, the worse of the two; 12-bit is ~10x closer because
#: its full-range window quantises the codec's error away): JPEG q90 0.0045, JPEG-LS NEAR=3
#: 0.0038, JPEG 2000 at 10:1 0.0072.
LOSSY_BOUND = {
    "JPEGBaseline8Bit": 0.012,
    "JPEGExtended12Bit": 0.012,
    "JPEGLSNearLossless": 0.012,
    "JPEG2000": 0.02,
    "HTJ2K": 0.02,
}

#: Sample files bundled with pydicom (not radiographs: the pixel path does not check modality)
PYDICOM_SAMPLES = (
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "SC_rgb_rle.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG2000.dcm",
    "693_J2KI.dcm",
)


def source_dataset(name: str) -> Dataset:
    return source_instance(SOURCES[name])


def entries(select: Callable[[Encoding], bool] = lambda e: True) -> list:  # type: ignore[type-arg]
    return corpus_entries(SOURCES, select)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """source name -> (transfer syntax UID -> file), built once for the module."""
    root = tmp_path_factory.mktemp("corpus")
    return {name: build_corpus(root / name, source_dataset(name)) for name in SOURCES}


def entry(corpora: dict[str, dict[str, Path]], source: str, enc: Encoding) -> Path:
    """The corpus file of ``enc``, or skip saying why it could not be built here."""
    path = corpora[source].get(enc.uid)
    if path is None:
        pytest.skip(missing_encoder(enc) or f"{enc.name} was not built")
    return path


@pytest.fixture(scope="module")
def prepared(corpora: dict[str, dict[str, Path]]) -> Callable[[str, str, DecodeOptions], np.ndarray]:
    """prepare_file of a corpus entry, memoised (each file is compared more than once)."""
    cache: dict[tuple[str, str, DecodeOptions], np.ndarray] = {}

    def get(source: str, ts_uid: str, opts: DecodeOptions) -> np.ndarray:
        key = (source, ts_uid, opts)
        if key not in cache:
            cache[key] = prepare_file(entry(corpora, source, BY_UID[ts_uid]), PREP, opts)
        return cache[key]

    return get


def shown(x: np.ndarray) -> np.ndarray:
    """The model input with the normalisation undone: the grey image in 0..1."""
    return x[0] * PREP.std[0] + PREP.mean[0]


# -- the corpus itself ------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "enc"), entries())
def test_corpus_entry_has_its_syntax_and_values(corpora: dict[str, dict[str, Path]],
                                                source: str, enc: Encoding) -> None:
    """Guards the corpus, not pixels.py: the file says its syntax, lossless ones hold the source."""
    ds = pydicom.dcmread(entry(corpora, source, enc))
    assert ds.file_meta.TransferSyntaxUID == enc.uid
    if enc.lossless:
        assert np.array_equal(ds.pixel_array, source_dataset(source).pixel_array)
    else:
        assert ds.LossyImageCompression == "01"


# -- every syntax prepares ----------------------------------------------------------------------


@pytest.mark.parametrize("opts", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize(("source", "enc"), entries())
def test_every_syntax_prepares(prepared: Callable[..., np.ndarray], source: str, enc: Encoding,
                               opts: DecodeOptions) -> None:
    x = prepared(source, enc.uid, opts)
    assert x.shape == (3, 224, 224)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert shown(x).std() > 0.05  # an image, not a constant


# -- lossless encodings give the same tensor ---------------------------------------------------


@pytest.mark.parametrize(("source", "enc"), entries(lambda e: e.lossless))
def test_lossless_equal_with_full_decoding(prepared: Callable[..., np.ndarray], source: str,
                                           enc: Encoding) -> None:
    assert np.array_equal(prepared(source, enc.uid, FULL), prepared(source, REFERENCE, FULL))


@pytest.mark.parametrize(("source", "enc"), entries(lambda e: e.lossless))
def test_lossless_with_default_options(prepared: Callable[..., np.ndarray], source: str,
                                       enc: Encoding) -> None:
    """Reduced-resolution J2K decoding included: the identical tensor (issue 18)."""
    assert np.array_equal(prepared(source, enc.uid, DEFAULT), prepared(source, REFERENCE, DEFAULT))


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, HTJ2KLossless], ids=["J2K", "HTJ2K"])
def test_reduced_decoding_is_used_for_the_large_source(corpora: dict[str, dict[str, Path]],
                                                       prepared: Callable[..., np.ndarray],
                                                       syntax: str) -> None:
    """The 12-bit source decodes a level down by default, and that changes nothing."""
    if missing_encoder(BY_UID[syntax]):
        pytest.skip(missing_encoder(BY_UID[syntax]))
    ds = read_dataset(entry(corpora, "12bit", BY_UID[syntax]))
    assert decode(ds, DEFAULT).shape == (1, 640, 550)
    assert np.array_equal(prepared("12bit", syntax, DEFAULT), prepared("12bit", syntax, FULL))


# -- lossy encodings are close ------------------------------------------------------------------


@pytest.mark.parametrize("opts", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize(("source", "enc"), entries(lambda e: not e.lossless))
def test_lossy_close_to_lossless(prepared: Callable[..., np.ndarray], source: str, enc: Encoding,
                                 opts: DecodeOptions) -> None:
    diff = np.abs(shown(prepared(source, enc.uid, opts)) - shown(prepared(source, REFERENCE, opts)))
    bound = LOSSY_BOUND[enc.name]
    assert diff.mean() < bound, (
        f"{enc.name} vs. {REFERENCE.name}: mean |diff| {diff.mean():.5f}, max {diff.max():.4f} "
        f"(bound {bound})")


# -- real files from elsewhere ------------------------------------------------------------------


@pytest.mark.parametrize("opts", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize("name", PYDICOM_SAMPLES)
def test_pydicom_sample_file_prepares(name: str, opts: DecodeOptions) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom (it would have to be downloaded)")
    x = prepare_file(Path(str(path)), PREP, opts)
    assert x.shape == (3, 224, 224)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()


# -- damaged codestreams ------------------------------------------------------------------------


@pytest.mark.parametrize("opts", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", ["JPEG2000Lossless", "JPEG2000", "RLELossless"])
def test_truncated_codestream_raises_pixel_decode_error(corpora: dict[str, dict[str, Path]],
                                                        tmp_path: Path, name: str, source: str,
                                                        opts: DecodeOptions) -> None:
    enc = next(e for e in ENCODINGS if e.name == name)
    bad = truncated_copy(entry(corpora, source, enc), tmp_path / "bad.dcm")
    with pytest.raises(PixelDecodeError) as info:
        prepare_file(bad, PREP, opts)
    assert UID(enc.uid).name in str(info.value)


@pytest.mark.parametrize(("source", "enc"), entries(
    lambda e: e.name in ("JPEGBaseline8Bit", "JPEGLossless", "JPEGLSLossless")))
def test_truncated_jpeg_raises_pixel_decode_error(corpora: dict[str, dict[str, Path]],
                                                  tmp_path: Path, source: str, enc: Encoding) -> None:
    bad = truncated_copy(entry(corpora, source, enc), tmp_path / "bad.dcm")
    with pytest.raises(PixelDecodeError) as info:
        prepare_file(bad, PREP, FULL)
    assert UID(enc.uid).name in str(info.value)
