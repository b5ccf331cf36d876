"""dicom_io.pixels: known-answer tests of the grey display pipeline (PS3.3 C.11, PS3.4 N.2).

Every dataset is tiny (a row or a 4 x 4 block of stored values chosen by hand) and every expected
output is worked out here from the standard's formulas, so a test fails on the first pixel that
drifts. Displayed values are ``floor(y * 255 + 0.5)`` of the [0, 1] output ``y`` of the VOI stage
(after inversion where the view is MONOCHROME1 or INVERSE); the numbers are chosen so that ``y``
is a binary fraction, or well away from a rounding tie, and float32 rounding cannot move them.

``DecodeOptions(working_size=0)`` keeps the stored resolution, except in the tests of the working
resolution itself. The basics (shapes, normalisation, MONOCHROME1 on a synthetic view) are in
tests/unit/test_pixels.py.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian

from dicom_io.errors import DicomIOError, InvalidInstance, PixelDecodeError, UnsupportedInstance
from dicom_io.pixels import (
    DecodeOptions,
    check_header,
    decode,
    display_frames,
    grey_frame_to_display,
    inverted,
    padding_mask,
    prepare_dataset,
    to_display,
    voi,
    window,
)
from dicom_io.synthetic import StudySpec, make_instance

FULL = DecodeOptions(working_size=0)


def grey(values: object, *, bits_stored: int = 12, signed: bool = False,
         photometric: str = "MONOCHROME2", **attributes: object) -> Dataset:
    """A CR instance whose stored values are exactly ``values`` (16 bits allocated), no VOI."""
    arr = np.atleast_2d(np.asarray(values))
    ds = make_instance(StudySpec(views=1, rows=arr.shape[0], columns=arr.shape[1],
                                 bits_stored=bits_stored, photometric=photometric), 0)
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelRepresentation = int(signed)
    ds.PixelData = arr.astype(np.int16 if signed else np.uint16).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def shown(ds: Dataset, opts: DecodeOptions = FULL) -> list[int]:
    """The displayed row(s) as a flat list of ints."""
    return [int(v) for v in to_display(ds, opts).ravel()]


def u8(y: float) -> int:
    """The 8-bit display level of a [0, 1] VOI output, as the pipeline rounds it."""
    return math.floor(min(max(y, 0.0), 1.0) * 255 + 0.5)


def linear(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1, with ymin = 0 and ymax = 1."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 1.0
    return (x - (c - 0.5)) / (w - 1) + 0.5


def linear_exact(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.3.2, with ymin = 0 and ymax = 1."""
    if x <= c - w / 2:
        return 0.0
    if x > c + w / 2:
        return 1.0
    return (x - c) / w + 0.5


def sigmoid(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.3.1, with ymin = 0 and ymax = 1."""
    return 1.0 / (1.0 + math.exp(-4.0 * (x - c) / w))


# -- Modality LUT (PS3.3 C.11.1) ---------------------------------------------------------------


def test_rescale_slope_and_intercept_known_answer() -> None:
    # modality = stored * 2 - 100: [0, 100, 200, 300] -> [-100, 100, 300, 500]
    # LINEAR c = 200.5, w = 801: y = (x - 200) / 800 + 0.5 -> 0.125, 0.375, 0.625, 0.875
    ds = grey([0, 100, 200, 300], RescaleSlope=2, RescaleIntercept=-100,
              WindowCenter=200.5, WindowWidth=801)
    assert shown(ds) == [32, 96, 159, 223]
    assert shown(ds) == [u8(linear(x, 200.5, 801)) for x in (-100, 100, 300, 500)]


def test_negative_rescale_slope_known_answer() -> None:
    # modality = 4095 - stored: [0, 1024, 3072, 4095] -> [4095, 3071, 1023, 0]
    # LINEAR_EXACT c = 2048, w = 4096: y = x / 4096
    ds = grey([0, 1024, 3072, 4095], RescaleSlope=-1, RescaleIntercept=4095,
              WindowCenter=2048, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT")
    # 4095/4096*255 = 254.94, 3071/4096*255 = 191.19, 1023/4096*255 = 63.69
    assert shown(ds) == [255, 191, 64, 0]


def test_fractional_rescale_slope_is_not_truncated() -> None:
    # modality = stored * 0.5 + 0.25: [0, 1, 2, 3, 4095] -> [0.25, 0.75, 1.25, 1.75, 2047.75]
    # LINEAR_EXACT c = 1, w = 2: y = (x - 1) / 2 + 0.5 = x / 2 -> 0.125, 0.375, 0.625, 0.875, 1
    ds = grey([0, 1, 2, 3, 4095], RescaleSlope=0.5, RescaleIntercept=0.25,
              WindowCenter=1, WindowWidth=2, VOILUTFunction="LINEAR_EXACT")
    assert shown(ds) == [32, 96, 159, 223, 255]


def _lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new("LUTData", "OW", np.asarray(data, dtype="<u2").tobytes())
    return item


@pytest.mark.parametrize("via_file", [False, True], ids=["in-memory", "file"])
def test_modality_lut_sequence_clamps_below_and_above(via_file: bool, tmp_path: Path) -> None:
    # LUT Descriptor [4 entries, first mapped 10, 16 bits], LUT Data [100, 200, 300, 400]:
    # stored < 10 -> the first entry, stored > 13 -> the last (PS3.3 C.11.1.1.1)
    ds = grey([0, 9, 10, 11, 12, 13, 14, 4095],
              WindowCenter=250, WindowWidth=400, VOILUTFunction="LINEAR_EXACT")
    ds.ModalityLUTSequence = [_lut_item([4, 10, 16], [100, 200, 300, 400])]
    if via_file:
        ds.save_as(tmp_path / "mlut.dcm", enforce_file_format=True)
        ds = pydicom.dcmread(tmp_path / "mlut.dcm")
    # modality [100, 100, 100, 200, 300, 400, 400, 400]; y = (x - 250) / 400 + 0.5
    assert shown(ds) == [32, 32, 32, 96, 159, 223, 223, 223]


def test_modality_lut_sequence_signed_first_mapped(tmp_path: Path) -> None:
    # signed 12-bit stored values, first mapped -2000 (LUT Descriptor value 2 is SS here)
    ds = grey([-2048, -2001, -2000, -1999, -1998, -1997, 2047], signed=True,
              WindowCenter=250, WindowWidth=400, VOILUTFunction="LINEAR_EXACT")
    ds.ModalityLUTSequence = [_lut_item([3, -2000, 16], [100, 200, 300])]
    ds.save_as(tmp_path / "slut.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(tmp_path / "slut.dcm")
    assert shown(ds) == [32, 32, 32, 96, 159, 159, 159]


# -- VOI LUT (PS3.3 C.11.2) --------------------------------------------------------------------


def test_linear_window_known_answer() -> None:
    # c = 10, w = 5: y = 0 for x <= 10 - 0.5 - 2 = 7.5, y = 1 for x > 11.5,
    # else (x - 9.5) / 4 + 0.5
    x = np.array([6, 7, 7.5, 8, 9, 10, 11, 11.5, 12, 13], dtype=np.float32)
    expected = [0, 0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1, 1]
    assert window(x, 10, 5).tolist() == expected
    assert [linear(v, 10, 5) for v in x.tolist()] == expected
    # the c - 0.5 and w - 1 matter: the naive (x - c) / w + 0.5 would give 0.1 at x = 8
    ds = grey([7, 8, 9, 10, 11, 12], WindowCenter=10, WindowWidth=5)
    assert shown(ds) == [0, 32, 96, 159, 223, 255]


def test_linear_window_agrees_with_the_standard_on_a_ramp() -> None:
    x = np.arange(-50, 300, 0.25, dtype=np.float32)
    for c, w in ((100, 101), (100.5, 64), (0, 2), (37, 3)):
        expected = [linear(v, c, w) for v in x.tolist()]
        assert np.allclose(window(x, c, w), expected, rtol=0, atol=1e-6), (c, w)


def test_linear_window_of_width_one_is_a_threshold_at_c_minus_half() -> None:
    # w = 1: y = 0 for x <= c - 0.5, y = 1 for x > c - 0.5
    x = np.array([8, 9, 9.5, 9.75, 10, 11], dtype=np.float32)
    assert window(x, 10, 1).tolist() == [0, 0, 0, 1, 1, 1]
    assert shown(grey([8, 9, 10, 11], WindowCenter=10, WindowWidth=1)) == [0, 0, 255, 255]


def test_linear_exact_known_answer() -> None:
    # c = 10, w = 8: y = 0 for x <= 6, y = 1 for x > 14, else (x - 10) / 8 + 0.5
    x = np.array([5, 6, 7, 9, 10, 13, 14, 15], dtype=np.float32)
    expected = [0, 0, 0.125, 0.375, 0.5, 0.875, 1, 1]
    assert window(x, 10, 8, "LINEAR_EXACT").tolist() == expected
    assert [linear_exact(v, 10, 8) for v in x.tolist()] == expected
    ds = grey([5, 7, 9, 10, 13, 15], WindowCenter=10, WindowWidth=8, VOILUTFunction="LINEAR_EXACT")
    assert shown(ds) == [0, 32, 96, 128, 223, 255]
    # LINEAR_EXACT allows a width below 1
    assert window(np.array([9.0, 10.0, 10.2, 11.0], dtype=np.float32), 10, 0.5,
                  "LINEAR_EXACT").tolist() == pytest.approx([0, 0.5, 0.9, 1], abs=1e-6)


def test_sigmoid_known_answer() -> None:
    # y = 1 / (1 + exp(-4 (x - c) / w)), c = 10, w = 8: no c - 0.5 offset, never exactly 0 or 1
    x = np.array([0, 8, 10, 12, 20], dtype=np.float32)
    expected = [1 / (1 + math.exp(5)), 1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-1)),
                1 / (1 + math.exp(-5))]
    assert window(x, 10, 8, "SIGMOID") == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx([sigmoid(v, 10, 8) for v in x.tolist()])
    ds = grey([0, 8, 10, 12, 20], WindowCenter=10, WindowWidth=8, VOILUTFunction="SIGMOID")
    # 255 * [0.00669, 0.26894, 0.5, 0.73106, 0.99331] = [1.71, 68.58, 127.5, 186.42, 253.29]
    assert shown(ds) == [2, 69, 128, 186, 253]


def test_voi_lut_function_is_case_and_space_tolerant() -> None:
    x = np.array([7, 9, 13], dtype=np.float32)
    assert window(x, 10, 8, " linear_exact ").tolist() == window(x, 10, 8, "LINEAR_EXACT").tolist()


def test_first_of_several_windows_is_used() -> None:
    ds = grey([7, 8, 9, 10, 11, 12], WindowCenter=[10, 1000], WindowWidth=[5, 3000],
              WindowCenterWidthExplanation=["NARROW", "WIDE"])
    assert shown(ds) == [0, 32, 96, 159, 223, 255]  # as the single window 10/5 above
    values, how = voi(np.array([8.0], dtype=np.float32), ds, None)
    assert values.tolist() == [0.125] and "10/5" in how


def test_voi_lut_sequence_16_bit_normalised_by_its_descriptor() -> None:
    # LUT Descriptor [4 entries, first mapped 10, 16 bits]: output / (2^16 - 1)
    ds = grey([5, 10, 11, 12, 13, 100])
    ds.VOILUTSequence = [_lut_item([4, 10, 16], [0, 1000, 40000, 65535])]
    # LUT output [0, 0, 1000, 40000, 65535, 65535]; 1000/65535*255 = 3.89, 40000/65535*255 = 155.64
    assert shown(ds) == [0, 0, 4, 156, 255, 255]


def test_voi_lut_sequence_12_bit_and_first_item_used() -> None:
    ds = grey([5, 10, 11, 12, 13, 100])
    ds.VOILUTSequence = [_lut_item([4, 10, 12], [0, 1000, 2000, 4095]),
                         _lut_item([4, 10, 12], [4095, 4095, 0, 0])]
    # / (2^12 - 1): 1000/4095*255 = 62.27, 2000/4095*255 = 124.54
    assert shown(ds) == [0, 0, 62, 125, 255, 255]


def test_voi_lut_sequence_takes_modality_values() -> None:
    # stored [5, 6, 7] * 2 -> [10, 12, 14]: entries 0, 2 and (clamped) 3
    ds = grey([5, 6, 7], RescaleSlope=2, RescaleIntercept=0)
    ds.VOILUTSequence = [_lut_item([4, 10, 16], [0, 1000, 40000, 65535])]
    assert shown(ds) == [0, 156, 255]


def test_voi_lut_sequence_8_bit_with_more_than_256_entries() -> None:
    # LUT Descriptor [512 entries, first mapped 0, 8 bits], entry i = i // 2; 600 clamps to 511
    ds = grey([0, 255, 256, 300, 511, 600])
    item = Dataset()
    item.LUTDescriptor = [512, 0, 8]
    item.LUTData = [i // 2 for i in range(512)]
    ds.VOILUTSequence = [item]
    # output / (2^8 - 1) * 255 = the entry itself
    assert shown(ds) == [0, 127, 128, 150, 255, 255]  # got [0, 127, 0, 22, 127, 44]


def test_voi_lut_sequence_input_above_65535_clamps() -> None:
    # modality = stored * 20: [1000, 4000] -> [20000, 80000]; identity LUT of 2^16 entries (0 = 65536)
    ds = grey([1000, 4000], RescaleSlope=20, RescaleIntercept=0)
    ds.VOILUTSequence = [_lut_item([0, 0, 16], list(range(65536)))]
    # 20000/65535*255 = 77.82; 80000 is above the last entry: 65535 -> 255
    assert shown(ds) == [78, 255]  # got [78, 56]


def test_no_voi_gives_a_percentile_window() -> None:
    # stored 0..200 (201 values): np.percentile (linear) 0.5 % -> 1, 99.5 % -> 199;
    # y = (x - 1) / 198, clipped
    ds = grey(np.arange(201))
    out = shown(ds)
    assert out[0] == 0 and out[1] == 0 and out[199] == 255 and out[200] == 255
    assert out[50] == 63 and out[150] == 192  # 49/198*255 = 63.11, 149/198*255 = 191.89
    assert out == [u8((x - 1) / 198) for x in range(201)]
    values, how = voi(np.arange(201, dtype=np.float32), ds, None)
    assert how == "percentile window"


def test_percentile_window_ignores_padding_however_large() -> None:
    ramp = np.concatenate([np.arange(201), np.full(10, 60000)])  # 16-bit stored, 10 padding pixels
    padded = grey(ramp, bits_stored=16, PixelPaddingValue=60000)
    out = shown(padded)
    assert out[:201] == [u8((x - 1) / 198) for x in range(201)]  # the window of 0..200 alone
    assert out[201:] == [0] * 10
    # without Pixel Padding Value, the padding drags the window's top to 60000: the anatomy is squashed
    squashed = shown(grey(ramp, bits_stored=16))
    assert max(squashed[:201]) <= 1 and squashed[201:] == [255] * 10


@pytest.mark.parametrize("attributes", [
    {"WindowCenter": 100, "WindowWidth": 0},
    {"WindowCenter": 100, "WindowWidth": 0.5},
    {"WindowCenter": 100, "WindowWidth": -10},
    {"WindowCenter": 100, "WindowWidth": 0, "VOILUTFunction": "LINEAR_EXACT"},
    {"WindowCenter": 100, "WindowWidth": 0, "VOILUTFunction": "SIGMOID"},
    {"WindowCenter": 100, "WindowWidth": 50, "VOILUTFunction": "LOG"},
], ids=["width-0", "width-0.5", "width-negative", "exact-width-0", "sigmoid-width-0", "unknown-function"])
def test_invalid_window_is_an_invalid_instance(attributes: dict[str, object]) -> None:
    with pytest.raises(InvalidInstance, match="VOI window"):
        to_display(grey([0, 100, 200], **attributes), FULL)


@pytest.mark.parametrize("element", ["WindowCenter", "WindowWidth"])
def test_unparseable_window_is_an_invalid_instance(element: str) -> None:
    ds = grey([0, 100, 200], WindowCenter=100, WindowWidth=50)
    tag = Tag(element)
    ds[tag] = RawDataElement(tag, "DS", 4, b"abc ", 0, False, True)
    with pydicom_config.disable_value_validation(), pytest.raises(InvalidInstance, match="abc"):
        to_display(ds, FULL)


# -- presentation: MONOCHROME1, Presentation LUT Shape -----------------------------------------


@pytest.mark.parametrize(("photometric", "shape", "inverse"), [
    ("MONOCHROME2", None, False),
    ("MONOCHROME1", None, True),
    ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", "INVERSE", True),  # DX: INVERSE is required with MONOCHROME1, not a 2nd flip
    ("MONOCHROME2", "IDENTITY", False),
])
def test_polarity(photometric: str, shape: str | None, inverse: bool) -> None:
    ds = grey([6, 7, 9, 11, 15], photometric=photometric,
              WindowCenter=10, WindowWidth=8, VOILUTFunction="LINEAR_EXACT")
    if shape:
        ds.PresentationLUTShape = shape
    assert inverted(ds) is inverse
    # y = (x - 10) / 8 + 0.5 -> [0, 0.125, 0.375, 0.625, 1]; shown as y, or 1 - y when inverted
    assert shown(ds) == ([255, 223, 159, 96, 0] if inverse else [0, 32, 96, 159, 255])


# -- Pixel Padding Value / Range Limit (PS3.3 C.7.5.1.1.2) ---------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_padding_is_black(photometric: str) -> None:
    # padding 0: under MONOCHROME1 it would otherwise be shown white
    ds = grey([0, 7, 9, 0, 11], photometric=photometric, PixelPaddingValue=0,
              WindowCenter=10, WindowWidth=8, VOILUTFunction="LINEAR_EXACT")
    out = shown(ds)
    assert out[0] == out[3] == 0
    assert out[1:3] + out[4:] == ([223, 159, 96] if photometric == "MONOCHROME1" else [32, 96, 159])


@pytest.mark.parametrize(("value", "limit"), [(4000, 4095), (4095, 4000)], ids=["ascending", "descending"])
def test_padding_range_limit_either_order(value: int, limit: int) -> None:
    stored = [0, 1024, 3999, 4000, 4050, 4095]
    ds = grey(stored, PixelPaddingValue=value, PixelPaddingRangeLimit=limit,
              WindowCenter=2048, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT")
    mask = padding_mask(np.array(stored), ds)
    assert mask is not None and mask.tolist() == [False, False, False, True, True, True]
    # y = x / 4096: 1024 -> 63.75, 3999 -> 248.97
    assert shown(ds) == [0, 64, 249, 0, 0, 0]


def test_padding_mask_absent_or_unused() -> None:
    stored = np.array([[1, 2], [3, 4]])
    assert padding_mask(stored, grey(stored)) is None
    assert padding_mask(stored, grey(stored, PixelPaddingValue=9)) is None
    assert padding_mask(stored, grey(stored, PixelPaddingValue=2)).tolist() == [[False, True], [False, False]]


def test_signed_padding_value(tmp_path: Path) -> None:
    ds = grey([-2048, -1024, 0, 2047], signed=True, PixelPaddingValue=-2048,
              WindowCenter=0, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT")
    ds.save_as(tmp_path / "s.dcm", enforce_file_format=True)  # Pixel Padding Value written as SS
    ds = pydicom.dcmread(tmp_path / "s.dcm")
    assert ds.PixelPaddingValue == -2048
    # y = x / 4096 + 0.5: -1024 -> 0.25, 0 -> 0.5, 2047 -> 0.99976
    assert shown(ds) == [0, 64, 128, 255]


def test_padding_does_not_bleed_into_anatomy_when_downscaled() -> None:
    # 6 x 6: columns 0-1 padding (4095), the rest anatomy at 1000; window 1000/2000 shows 1000 as
    # (1000 - 999.5) / 1999 + 0.5 -> 127.56 -> 128. Downscaled to 4 x 4 (working_size 4, scale 2/3),
    # output column 1 covers input columns 1.5-3: one third padding, so it is anatomy (mask < 0.5)
    stored = np.full((6, 6), 1000)
    stored[:, :2] = 4095
    ds = grey(stored, PixelPaddingValue=4095, WindowCenter=1000, WindowWidth=2000)
    out = to_display(ds, DecodeOptions(working_size=4))
    assert out.shape == (4, 4)
    assert set(np.unique(out).tolist()) <= {0, 128}  # got column 1 = 255: (4095 + 2*1000) / 3


# -- Bits Stored, High Bit, Pixel Representation, byte order ------------------------------------


def test_garbage_in_unused_high_bits_is_ignored() -> None:
    values = np.array([0, 100, 2048, 4095])
    clean = grey(values, WindowCenter=2048, WindowWidth=4096)
    dirty = grey(values | 0xF000, WindowCenter=2048, WindowWidth=4096)  # 16 allocated, 12 stored
    assert decode(dirty, FULL).ravel().tolist() == [0, 100, 2048, 4095]
    assert shown(dirty) == shown(clean)


@pytest.mark.parametrize("encoding", ["sign-extended", "12-bit", "garbage-above"])
def test_signed_12_bit(encoding: str) -> None:
    values = np.array([-2048, -1, 0, 2047])
    raw = values.astype(np.int16).view(np.uint16)
    if encoding != "sign-extended":
        raw = raw & 0x0FFF  # the 12-bit two's complement alone
    if encoding == "garbage-above":
        raw = raw | 0xA000
    ds = grey(raw, signed=False, WindowCenter=0, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT")
    ds.PixelRepresentation = 1
    assert decode(ds, FULL).ravel().tolist() == [-2048, -1, 0, 2047]
    # y = x / 4096 + 0.5: -1 -> 127.44, 0 -> 127.5, 2047 -> 254.94
    assert shown(ds) == [0, 127, 128, 255]


@pytest.mark.parametrize(("high_bit", "signed"), [(15, False), (13, False), (15, True)])
def test_legacy_high_bit_shifts_the_stored_bits(high_bit: int, signed: bool) -> None:
    values = np.array([-2048, -1, 0, 2047] if signed else [0, 100, 2048, 4095])
    shift = high_bit + 1 - 12
    raw = ((values & 0x0FFF) << shift) | ((1 << shift) - 1)  # garbage in the bits below
    ds = grey(raw, HighBit=high_bit, WindowCenter=0 if signed else 2048, WindowWidth=4096,
              VOILUTFunction="LINEAR_EXACT")
    ds.PixelRepresentation = int(signed)
    assert decode(ds, FULL).ravel().tolist() == values.tolist()
    assert shown(ds) == ([0, 127, 128, 255] if signed else [0, 6, 128, 255])


def _save_big_endian(ds: Dataset, values: np.ndarray, path: Path) -> Dataset:
    """``ds`` (in memory) written in Explicit VR Big Endian with ``values`` as its pixels, read back."""
    be = copy.deepcopy(ds)
    be.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    be.PixelData = values.astype(">u2").tobytes()
    be.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_big_endian_round_trip_displays_as_little_endian(tmp_path: Path) -> None:
    values = (np.arange(16).reshape(4, 4) * 273).astype(np.uint16)  # 0 .. 4095
    ds = grey(values, WindowCenter=2048, WindowWidth=4096, PixelPaddingValue=273)
    be = _save_big_endian(ds, values, tmp_path / "be.dcm")
    ds.save_as(tmp_path / "le.dcm", enforce_file_format=True)
    le = pydicom.dcmread(tmp_path / "le.dcm")
    assert be.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert decode(be, FULL).tolist() == decode(le, FULL).tolist() == [values.tolist()]
    assert to_display(be, FULL).tolist() == to_display(le, FULL).tolist()
    assert to_display(be, FULL)[0, 1] == 0  # padding, found in big-endian stored values


def test_big_endian_with_legacy_high_bit(tmp_path: Path) -> None:
    values = np.array([[0, 100, 2048, 4095]])
    ds = grey(values << 4, HighBit=15)
    be = _save_big_endian(ds, values << 4, tmp_path / "be.dcm")
    assert decode(be, FULL).ravel().tolist() == [0, 100, 2048, 4095]


# -- colour secondary captures -> grey (ITU-R 601) -----------------------------------------------


def colour(pixels: np.ndarray, photometric: str = "RGB", planar: int = 0) -> Dataset:
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds = grey(np.zeros(pixels.shape[:2]))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, planar
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelData = (pixels.transpose(2, 0, 1) if planar else pixels).tobytes()
    return ds


RGB = np.random.default_rng(5).integers(0, 256, (6, 7, 3)).astype(np.uint8)
GREY_OF_RGB = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY).astype(int)  # 0.299 R + 0.587 G + 0.114 B


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_8_bit(planar: int) -> None:
    out = to_display(colour(RGB, planar=planar), FULL)
    assert out.dtype == np.uint8 and out.shape == (6, 7)
    assert np.abs(out.astype(int) - GREY_OF_RGB).max() <= 1


def test_rgb_16_bit() -> None:
    out = to_display(colour(RGB.astype(np.uint16) * 257), FULL)  # 8 -> 16 bits, same intensities
    assert np.abs(out.astype(int) - GREY_OF_RGB).max() <= 1


def test_legacy_high_bit_with_planar_rgb() -> None:
    rgb = np.random.default_rng(1).integers(0, 4096, (2, 3, 3)).astype(np.uint16)
    ds = colour(rgb << 4, planar=1)
    ds.BitsStored, ds.HighBit = 12, 15
    assert decode(ds, FULL)[0].tolist() == rgb.tolist()


def test_ybr_full() -> None:
    ybr = convert_color_space(RGB, "RGB", "YBR_FULL")
    out = to_display(colour(ybr, "YBR_FULL"), FULL)
    assert np.abs(out.astype(int) - GREY_OF_RGB).max() <= 1


@pytest.mark.parametrize("entry_bits", [16, 8])
def test_palette_colour(entry_bits: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    top = (1 << entry_bits) - 1
    lut = rng.integers(0, top + 1, (3, 20))
    indices = np.arange(20).reshape(4, 5)
    ds = grey(np.zeros((4, 5)))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = indices.astype(np.uint8).tobytes()
    for name, channel in zip(("Red", "Green", "Blue"), lut):
        # 20 entries, first mapped 0; 8-bit entries are stored one per 16-bit word (C.7.6.3.1.6)
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [20, 0, entry_bits])
        setattr(ds, f"{name}PaletteColorLookupTableData", channel.astype("<u2").tobytes())
    ds.save_as(tmp_path / "pal.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(tmp_path / "pal.dcm")
    rgb = lut.T[indices] / top  # the palette's colour of every pixel, in [0, 1]
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) * 255
    assert np.abs(to_display(ds, FULL) - expected).max() <= 1


# -- multi-frame --------------------------------------------------------------------------------


def multiframe(frames: int = 3, side: int = 32) -> tuple[Dataset, list[np.ndarray]]:
    rng = np.random.default_rng(3)
    stack = [rng.integers(0, 4096, (side, side)) for _ in range(frames)]
    ds = grey(stack[0], WindowCenter=2048, WindowWidth=4096)
    ds.NumberOfFrames = frames
    ds.PixelData = np.stack(stack).astype(np.uint16).tobytes()
    return ds, stack


def test_multiframe_refused_by_default() -> None:
    ds, _ = multiframe()
    for opts in (DecodeOptions(), DecodeOptions(multiframe="refuse")):
        with pytest.raises(UnsupportedInstance, match="multi-frame"):
            display_frames(ds, opts)


def test_multiframe_frames_each_displayed() -> None:
    ds, stack = multiframe()
    opts = DecodeOptions(working_size=0, multiframe="frames")
    shown_frames = display_frames(ds, opts)
    assert len(shown_frames) == 3
    for got, frame in zip(shown_frames, stack):  # each as a single-frame view of the same values
        single = grey(frame, WindowCenter=2048, WindowWidth=4096)
        assert got.tolist() == to_display(single, FULL).tolist()
    x = prepare_dataset(ds, opts=opts)
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    assert not np.allclose(x[0], x[1]) and not np.allclose(x[1], x[2])


# -- header checks (before decoding) ------------------------------------------------------------


def test_no_pixel_data_is_a_decode_error() -> None:
    ds = grey([1, 2])
    del ds.PixelData
    with pytest.raises(PixelDecodeError, match="no pixel data"):
        check_header(ds, FULL)
    ds.FloatPixelData = np.zeros(2, np.float32).tobytes()
    with pytest.raises(PixelDecodeError, match="FloatPixelData"):
        check_header(ds, FULL)


def test_truncated_native_pixel_data() -> None:
    ds = grey(np.zeros((4, 4)))
    ds.PixelData = ds.PixelData[:-2]  # 30 of 32 bytes
    with pytest.raises(InvalidInstance, match="truncated"):
        to_display(ds, FULL)


@pytest.mark.parametrize("attributes", [
    {"BitsStored": 17},
    {"BitsStored": 0},
    {"HighBit": 16},
    {"HighBit": 10},  # below Bits Stored - 1
    {"BitsAllocated": 12},
    {"SamplesPerPixel": 3},  # with MONOCHROME2
    {"PixelRepresentation": 2},
    {"Rows": 0},
], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_contradicting_header_is_invalid(attributes: dict[str, int]) -> None:
    ds = grey(np.zeros((4, 4)))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    with pytest.raises(InvalidInstance):
        check_header(ds, FULL)


def test_rgb_with_one_sample_is_invalid() -> None:
    ds = grey(np.zeros((4, 4)), PhotometricInterpretation="RGB")
    with pytest.raises(InvalidInstance, match="Samples per Pixel 1 contradicts RGB"):
        check_header(ds, FULL)


@pytest.mark.parametrize("photometric", ["CMYK", "HSV", "ARGB", "YBR_PARTIAL_420"])
def test_unsupported_photometric_interpretation(photometric: str) -> None:
    ds = grey(np.zeros((4, 4)), PhotometricInterpretation=photometric)
    with pytest.raises(UnsupportedInstance, match=photometric):
        to_display(ds, FULL)


def test_too_many_pixels_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = grey(np.zeros((4, 4)))  # 16 pixels
    check_header(ds, DecodeOptions(max_pixels=16))

    def must_not_decode(self: Dataset) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(Dataset, "pixel_array", property(must_not_decode))
    ds.PixelData = ds.PixelData[:2]  # truncated: not even the length is looked at
    with pytest.raises(UnsupportedInstance, match=r"limits\.max_pixels \(15\)"):
        to_display(ds, DecodeOptions(max_pixels=15))


def test_dataset_without_file_meta_is_a_dicom_io_error() -> None:
    ds = grey(np.zeros((4, 4)))
    del ds.file_meta
    with pytest.raises(DicomIOError):
        to_display(ds, FULL)


# -- working resolution -------------------------------------------------------------------------


def test_working_resolution_halves_a_2048_x_1024_view() -> None:
    ds = make_instance(StudySpec(views=1, rows=2048, columns=1024), 0)
    assert to_display(ds, DecodeOptions(working_size=512)).shape == (1024, 512)
    assert to_display(ds, DecodeOptions(working_size=0)).shape == (2048, 1024)


def test_working_resolution_never_upscales() -> None:
    ds = make_instance(StudySpec(views=1, rows=300, columns=300), 0)
    assert to_display(ds, DecodeOptions(working_size=512)).shape == (300, 300)


def test_grey_frame_to_display_is_pure() -> None:
    ds = grey([0], WindowCenter=10, WindowWidth=8, VOILUTFunction="LINEAR_EXACT")
    stored = np.array([[7, 9, 13]])
    assert grey_frame_to_display(stored, ds, FULL).tolist() == [[32, 96, 223]]
    assert stored.tolist() == [[7, 9, 13]]
