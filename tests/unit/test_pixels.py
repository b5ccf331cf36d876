"""dicom_io.pixels: from a stored radiograph to the model's input tensor (the basics)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_io.errors import InvalidInstance, PixelDecodeError, UnsupportedInstance
from dicom_io.pixels import Preprocessing, prepare_file, read_dataset, to_display, to_model_input
from dicom_io.synthetic import StudySpec, make_instance


@pytest.fixture
def ds() -> Dataset:
    return make_instance(StudySpec(views=1, seed=7), 0)


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_prepare_file_shape_and_type(ds: Dataset, tmp_path: Path) -> None:
    x = prepare_file(save(ds, tmp_path / "a.dcm"))
    assert x.shape == (3, 224, 224)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    # three identical channels before normalisation: undo it and compare
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]
    raw = x * std + mean
    assert np.allclose(raw[0], raw[1], atol=1e-5) and np.allclose(raw[1], raw[2], atol=1e-5)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert raw.std() > 0.05  # an image, not a constant


def test_prepare_file_other_size(ds: Dataset, tmp_path: Path) -> None:
    x = prepare_file(save(ds, tmp_path / "a.dcm"), Preprocessing(size=96))
    assert x.shape == (3, 96, 96) and x.dtype == np.float32


def test_non_square_image_is_squashed(tmp_path: Path) -> None:
    ds = make_instance(StudySpec(views=1, rows=300, columns=120), 0)
    assert prepare_file(save(ds, tmp_path / "a.dcm")).shape == (3, 224, 224)


def test_display_without_window_is_uint8_full_range(ds: Dataset) -> None:
    del ds.WindowCenter, ds.WindowWidth  # the percentile window spans the anatomy
    grey = to_display(ds)
    assert grey.dtype == np.uint8 and grey.shape == (256, 256)
    assert grey.min() == 0 and grey.max() == 255


def test_monochrome1_is_inverted(ds: Dataset) -> None:
    m1 = copy.deepcopy(ds)
    m1.PhotometricInterpretation = "MONOCHROME1"
    g2 = to_display(ds).astype(int)
    g1 = to_display(m1).astype(int)
    assert np.abs(g1 + g2 - 255).max() <= 1
    assert np.abs(g1 - g2).mean() > 50


def test_monochrome1_without_window_is_inverted(ds: Dataset) -> None:
    del ds.WindowCenter
    del ds.WindowWidth
    m1 = copy.deepcopy(ds)
    m1.PhotometricInterpretation = "MONOCHROME1"
    assert np.abs(to_display(m1).astype(int) + to_display(ds) - 255).max() <= 1


def test_rescale_slope_and_intercept_are_applied(ds: Dataset) -> None:
    stored = ds.pixel_array.astype(np.int64)
    # A: stored values with a rescale; B: the rescaled values stored directly; C: no rescale.
    a = copy.deepcopy(ds)
    a.RescaleSlope, a.RescaleIntercept = 2, 100
    b = copy.deepcopy(ds)
    b.BitsStored, b.HighBit = 16, 15
    b.PixelData = (2 * stored + 100).astype(np.uint16).tobytes()
    c = copy.deepcopy(ds)
    for x in (a, b, c):  # the window is in rescaled (modality) units
        x.WindowCenter, x.WindowWidth = 4000, 4000
    da, db, dc = to_display(a), to_display(b), to_display(c)
    assert np.abs(da.astype(int) - db).max() <= 1
    assert np.abs(da.astype(int) - dc).max() > 50


def test_negative_slope_without_window_inverts(ds: Dataset) -> None:
    del ds.WindowCenter
    del ds.WindowWidth
    neg = copy.deepcopy(ds)
    neg.RescaleSlope, neg.RescaleIntercept = -1, 4095
    assert np.abs(to_display(neg).astype(int) + to_display(ds) - 255).max() <= 1


def test_to_model_input_normalises() -> None:
    grey = np.full((10, 20), 255, dtype=np.uint8)
    x = to_model_input(grey, Preprocessing(size=8))
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert x.shape == (3, 8, 8)
    assert np.allclose(x[:, 0, 0], expected, atol=1e-5)


def test_preprocessing_from_card() -> None:
    prep = Preprocessing.from_card({"size": 320, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert prep == Preprocessing(size=320, crop=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    # a card that leaves a key out was trained before it existed: no crop, no CLAHE, squashed
    assert Preprocessing.from_card({}) == Preprocessing(crop=False, clahe=False, resize="squash")


def test_a_new_cards_default_preprocessing_is_todays_default() -> None:
    from inference.model import ModelCard, default_preprocessing

    assert Preprocessing.from_card(default_preprocessing()) == Preprocessing()
    assert set(default_preprocessing()) == set(Preprocessing().to_card())
    assert Preprocessing.from_card(ModelCard(name="m", version="1").preprocessing) == Preprocessing()


# -- what cannot be scored ------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"hello, I am not DICOM\n" * 20, b"\x00" * 128 + b"DICX" + b"\x00" * 64])
def test_non_dicom_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(content)
    with pytest.raises(InvalidInstance):
        prepare_file(path)
    with pytest.raises(InvalidInstance):
        read_dataset(path)


def test_multi_frame_is_unsupported(ds: Dataset, tmp_path: Path) -> None:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    with pytest.raises(UnsupportedInstance, match="multi-frame"):
        prepare_file(save(ds, tmp_path / "mf.dcm"))


def test_missing_pixel_data_is_a_decode_error(ds: Dataset, tmp_path: Path) -> None:
    del ds.PixelData
    with pytest.raises(PixelDecodeError):
        prepare_file(save(ds, tmp_path / "nopix.dcm"))
