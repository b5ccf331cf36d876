"""dicom_io.geometry and dicom_io.heatmaps: a heatmap cell lands where it was on the view."""
from __future__ import annotations

import numpy as np
import pytest

from dicom_io.geometry import ViewGeometry, normalise_heatmap, peak_box
from dicom_io.heatmaps import decode_heatmap, encode_heatmap
from dicom_io.pixels import Preprocessing, to_model_input_with_crop


def test_squash_box_maps_through_crop_and_scale() -> None:
    # original 2000 x 1000 (rows x columns) shown at 1000 x 500, cropped to rows 100-900, cols 50-450
    g = ViewGeometry(rows=2000, columns=1000, display_height=1000, display_width=500,
                     crop=(100, 900, 50, 450), size=224)
    assert g.input_box_to_display((0, 0, 224, 224)) == pytest.approx((50, 100, 450, 900))
    # the input's centre quarter is the crop's centre quarter, doubled onto the original
    assert g.input_box_to_original((56, 56, 168, 168)) == (300.0, 600.0, 700.0, 1400.0)


def test_letterbox_box_leaves_out_the_padding() -> None:
    # a crop twice as tall as wide: letterboxed, it fills the middle half of the input's columns
    g = ViewGeometry(rows=400, columns=400, display_height=400, display_width=400,
                     crop=(0, 400, 100, 300), size=200, resize="letterbox")
    assert g.input_box_to_display((50, 0, 150, 200)) == pytest.approx((100, 0, 300, 400))
    # a box in the padding is clipped to the crop
    x0, _, x1, _ = g.input_box_to_display((0, 0, 40, 200))
    assert x0 == x1 == 100


def test_heatmap_on_display_is_zero_outside_the_crop_and_follows_the_hot_cell() -> None:
    g = ViewGeometry(rows=300, columns=600, display_height=300, display_width=600,
                     crop=(50, 250, 100, 500), size=224)
    hm = np.zeros((7, 7), np.float32)
    hm[0, 6] = 1.0  # top right cell of the input
    on = g.heatmap_on_display(hm)
    assert on.shape == (300, 600)
    assert on[:50].max() == 0 and on[:, :100].max() == 0 and on[250:].max() == 0
    y, x = np.unravel_index(np.argmax(on), on.shape)
    assert 50 <= y < 90 and 440 <= x < 500
    small = g.heatmap_on_display(hm, (150, 300))  # the same view at half scale
    ys, xs = np.unravel_index(np.argmax(small), small.shape)
    assert abs(ys - y / 2) <= 2 and abs(xs - x / 2) <= 2


def test_peak_box_is_the_region_around_the_maximum() -> None:
    hm = np.zeros((7, 7), np.float32)
    hm[1:3, 4:6] = 5.0
    hm[5, 0] = 3.0  # a second, lower region: not the peak's
    x0, y0, x1, y1 = peak_box(hm, 224)
    assert 112 <= x0 <= 144 and 176 <= x1 <= 208 and 16 <= y0 <= 48 and 80 <= y1 <= 112
    assert peak_box(np.ones((7, 7)), 224) == (0.0, 0.0, 224.0, 224.0)  # flat: no peak
    with pytest.raises(ValueError):
        peak_box(hm, 224, level=1.5)


def test_geometry_of_prepared_view_round_trips_the_crop() -> None:
    grey = np.zeros((300, 200), np.uint8)
    grey[40:260, 60:150] = 200  # the anatomy
    x, crop = to_model_input_with_crop(grey, Preprocessing(size=64))
    assert x.shape == (3, 64, 64)
    y0, y1, x0, x1 = crop
    assert y0 <= 40 and y1 >= 260 and x0 <= 60 and x1 >= 150 and (y1 - y0) < 300
    g = ViewGeometry(rows=600, columns=400, display_height=300, display_width=200, crop=crop, size=64)
    assert ViewGeometry.from_dict(g.to_dict()) == g


def test_heatmap_codec_round_trip_and_errors() -> None:
    hm = np.random.default_rng(0).normal(size=(7, 7)).astype(np.float32) * 4
    blob = encode_heatmap(hm)
    assert len(blob) < 7 * 7 * 4
    np.testing.assert_allclose(decode_heatmap(blob), hm, atol=4e-3)
    with pytest.raises(ValueError):
        decode_heatmap(b"nonsense")
    with pytest.raises(ValueError):
        decode_heatmap(blob[:-3])
    with pytest.raises(ValueError):
        encode_heatmap(np.full((2, 2), np.nan))
    assert normalise_heatmap(np.full((3, 3), 2.0)).max() == 0
