"""dicom_io.pixels: crop to the anatomy (anatomy_box), CLAHE and the resize modes.

The views are synthetic displayed radiographs (uint8, 512 x 512, bone bright) drawn with numpy and
OpenCV, with their ground truth: a dark exposed background with noise, a limb (a tapered
soft-tissue band entering from the bottom edge, a bright bone bar with a cortex inside it), and
optionally collimation (bright) or padding (black) borders and burned-in text in the corners of the
exposed field. ``anatomy_box`` must return a box that holds the whole limb, stays inside the exposed
field and leaves the text out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from dicom_io.pixels import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    anatomy_box,
    prepare_file,
    resize,
    to_display,
    to_model_input,
)
from dicom_io.synthetic import StudySpec, make_instance

SIZE = 512
BORDER = 48
SIDES = ("top", "bottom", "left", "right")
FONT = cv2.FONT_HERSHEY_SIMPLEX
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), ends exclusive, as anatomy_box returns

#: How far the box may cut into the limb or reach past the exposed field (pixels of 512).
TOLERANCE = 6
#: How much looser than the limb the box may be (the 3 % margin, and some slack).
SLACK = 32


@dataclass
class View:
    grey: np.ndarray
    limb: Box  # the soft tissue's bounding box inside the exposed field
    exposed: Box = (0, SIZE, 0, SIZE)
    texts: list[Box] = field(default_factory=list)


def _limb(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of soft tissue, bone and cortex of a limb of the given kind."""
    tissue = np.zeros((SIZE, SIZE), np.uint8)
    bone = np.zeros((SIZE, SIZE), np.uint8)
    c = SIZE // 2
    if kind == "forearm":  # tapered, rounded top end at y = 70, enters from the bottom edge
        cv2.fillPoly(tissue, [np.array([[c - 60, 100], [c + 60, 100], [c + 80, SIZE + 10],
                                        [c - 80, SIZE + 10]], np.int32)], 1)
        cv2.ellipse(tissue, (c, 100), (60, 30), 0, 180, 360, 1, -1)
        cv2.fillPoly(bone, [np.array([[c - 25, 130], [c + 25, 130], [c + 35, SIZE + 10],
                                      [c - 35, SIZE + 10]], np.int32)], 1)
    elif kind == "band":  # axis-aligned, parallel edges, top to bottom
        tissue[:, 176:336] = 1
        bone[40:SIZE - 40, 221:291] = 1
    elif kind == "diagonal":  # corner to corner: touches all four edges
        cv2.line(tissue, (-40, -40), (SIZE + 40, SIZE + 40), 1, 200)
        cv2.line(bone, (-40, -40), (SIZE + 40, SIZE + 40), 1, 70)
    elif kind == "fill":  # soft tissue everywhere (skin outside the detector), two bones
        tissue[:] = 1
        cv2.line(bone, (150, -10), (190, SIZE + 10), 1, 60)
        cv2.line(bone, (330, -10), (300, SIZE + 10), 1, 50)
    else:
        raise ValueError(kind)
    cortex = bone & (1 - cv2.erode(bone, np.ones((9, 9), np.uint8)))
    return tissue.astype(bool), bone.astype(bool), cortex.astype(bool)


def radiograph(seed: int = 0, *, limb: str = "forearm", collimation: tuple[str, ...] = (),
               padding: tuple[str, ...] = (), text: bool = False, levels: dict[str, int] | None = None,
               border_noise: float = 0.0, border_ramp: float = 0.0) -> View:
    """A displayed view: background ~25, soft tissue ~100, bone ~185, cortex 235 (uint8).

    Collimation is bright (230, or ``levels[side]``), plus ``border_noise`` (sigma) and a ramp of
    ``border_ramp`` levels across the view in x and in y; padding is 0. Text is white, in three
    corners of the exposed field.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    tissue, bone, cortex = _limb(limb)
    g = 25 + rng.normal(0, 4, (SIZE, SIZE))
    thickness = 100 - 0.0067 * np.abs(x - SIZE / 2) ** 1.5  # thinner tissue towards the skin
    g[tissue] = (thickness + rng.normal(0, 5, g.shape))[tissue]
    g[bone] = (185 + rng.normal(0, 4, g.shape))[bone]
    g[cortex] = 235
    exposed = [0, SIZE, 0, SIZE]
    ramp = border_ramp * (x + y) / SIZE
    for side in collimation + padding:
        where = {"top": np.s_[:BORDER], "bottom": np.s_[SIZE - BORDER:],
                 "left": np.s_[:, :BORDER], "right": np.s_[:, SIZE - BORDER:]}[side]
        level = 0 if side in padding else (levels or {}).get(side, 230)
        g[where] = level if side in padding else (level + ramp + rng.normal(0, border_noise, g.shape))[where]
        i = SIDES.index(side)
        exposed[i] = BORDER if i % 2 == 0 else SIZE - BORDER
    g = np.clip(g, 0, 255).astype(np.uint8)
    ey0, ey1, ex0, ex1 = exposed
    texts = []
    if text:
        for words, scale, thickness_, corner in (("L", 1.6, 3, "tl"), ("R 12/03/2026 CR", 0.4, 1, "tr"),
                                                 ("R", 1.0, 2, "br")):
            (tw, th), base = cv2.getTextSize(words, FONT, scale, thickness_)
            ox = ex0 + 12 if corner[1] == "l" else ex1 - 12 - tw
            oy = ey0 + 12 + th if corner[0] == "t" else ey1 - 12 - base
            cv2.putText(g, words, (ox, oy), FONT, scale, 255, thickness_)
            texts.append((oy - th - 1, oy + base + 1, ox - 1, ox + tw + 1))
    visible = tissue.copy()
    visible[:ey0] = visible[ey1:] = False
    visible[:, :ex0] = visible[:, ex1:] = False
    ys, xs = np.nonzero(visible)
    limb_box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    view = View(g, limb_box, (exposed[0], exposed[1], exposed[2], exposed[3]), texts)
    for t in view.texts:  # the text is in the exposed field and does not touch the limb
        assert not visible[t[0]:t[1], t[2]:t[3]].any()
    return view


def problems(view: View, box: Box) -> list[str]:
    """What is wrong with ``box`` for ``view``: empty when it fits."""
    y0, y1, x0, x1 = box
    ly0, ly1, lx0, lx1 = view.limb
    ey0, ey1, ex0, ex1 = view.exposed
    out = []
    if not (y0 <= ly0 + TOLERANCE and y1 >= ly1 - TOLERANCE
            and x0 <= lx0 + TOLERANCE and x1 >= lx1 - TOLERANCE):
        out.append(f"box {box} cuts the limb {view.limb}")
    if not (y0 >= ey0 - 3 and y1 <= ey1 + 3 and x0 >= ex0 - 3 and x1 <= ex1 + 3):
        out.append(f"box {box} keeps borders outside the exposed field {view.exposed}")
    if not (y0 >= ly0 - SLACK and y1 <= ly1 + SLACK and x0 >= lx0 - SLACK and x1 <= lx1 + SLACK):
        out.append(f"box {box} is much looser than the limb {view.limb}")
    for t in view.texts:
        if y0 < t[1] and t[0] < y1 and x0 < t[3] and t[2] < x1:
            out.append(f"box {box} keeps the text at {t}")
    return out


# -- anatomy_box: what it gets right --------------------------------------------------------------

SCENES = {
    "plain": {},
    "text": {"text": True},
    "collimation-left+text": {"collimation": ("left",), "text": True},
    "collimation-left-right": {"collimation": ("left", "right")},
    "collimation-top-noisy": {"collimation": ("top",), "border_noise": 3, "border_ramp": 6},
    "collimation-3-noisy+text": {"collimation": ("top", "left", "right"), "border_noise": 3,
                                 "border_ramp": 6, "text": True},
    "collimation-4": {"collimation": SIDES},
    "collimation-4-noisy+text": {"collimation": SIDES, "border_noise": 3, "border_ramp": 6, "text": True},
    "collimation-4-levels": {"collimation": SIDES, "levels": {"top": 230, "bottom": 215, "left": 225,
                                                              "right": 205}},
    "padding-4+text": {"padding": SIDES, "text": True},
    "padding-left-right+text": {"padding": ("left", "right"), "text": True},
}


@pytest.mark.parametrize("scene", SCENES.values(), ids=SCENES.keys())
def test_box_holds_the_limb_and_leaves_borders_and_text_out(scene: dict) -> None:
    for seed in (0, 1):
        view = radiograph(seed, **scene)
        assert problems(view, anatomy_box(view.grey)) == []


def test_box_on_a_known_view() -> None:
    view = radiograph(0, collimation=SIDES, text=True)
    # limb (70, 464, 178, 335) inside the field (48, 464, 48, 464); text at the field's corners
    assert view.limb == (70, 464, 178, 335) and view.exposed == (48, 464, 48, 464)
    y0, y1, x0, x1 = anatomy_box(view.grey)
    assert 48 <= y0 <= 70 and y1 == 464
    assert 160 <= x0 <= 178 and 335 <= x1 <= 356


def test_pure_noise_gives_the_whole_view() -> None:
    rng = np.random.default_rng(0)
    assert anatomy_box(rng.integers(0, 256, (SIZE, SIZE)).astype(np.uint8)) == (0, SIZE, 0, SIZE)
    noise = np.clip(rng.normal(100, 20, (300, 400)), 0, 255).astype(np.uint8)
    assert anatomy_box(noise) == (0, 300, 0, 400)


def test_limb_touching_the_edges_gives_nearly_the_whole_view() -> None:
    y0, y1, x0, x1 = anatomy_box(radiograph(0, limb="diagonal").grey)
    assert (y1 - y0) >= 0.95 * SIZE and (x1 - x0) >= 0.95 * SIZE


def test_small_views_are_not_cropped() -> None:
    assert anatomy_box(np.zeros((15, 40), np.uint8)) == (0, 15, 0, 40)


# -- anatomy_box: harder views (once wrong: uniform, low contrast, parallel limb, noisy, rotated) ------


@pytest.mark.parametrize("level", [128, 0])
def test_uniform_view_gives_the_whole_view(level: int) -> None:
    assert anatomy_box(np.full((SIZE, SIZE), level, np.uint8)) == (0, SIZE, 0, SIZE)


def test_low_contrast_view_is_not_centre_cropped() -> None:
    grey = _low_contrast()
    y0, y1, x0, x1 = anatomy_box(grey)
    assert (y1 - y0) * (x1 - x0) >= 0.5 * grey.size


def test_axis_aligned_limb_keeps_its_soft_tissue() -> None:
    view = radiograph(0, limb="band")
    assert problems(view, anatomy_box(view.grey)) == []


def test_limb_filling_the_view_gives_nearly_the_whole_view() -> None:
    y0, y1, x0, x1 = anatomy_box(radiograph(0, limb="fill").grey)
    assert (y1 - y0) >= 0.95 * SIZE and (x1 - x0) >= 0.95 * SIZE


def test_noisier_collimation_is_left_out() -> None:
    view = radiograph(0, collimation=SIDES, border_noise=5, border_ramp=10)
    assert problems(view, anatomy_box(view.grey)) == []


def test_rotated_collimation_is_left_out() -> None:
    view = radiograph(0)
    field_mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(field_mask, [cv2.boxPoints(((256, 256), (400, 400), 3)).astype(np.int32)], 1)
    view.grey[field_mask == 0] = 228
    ys, xs = np.nonzero(field_mask)
    view.exposed = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    y0, y1, x0, x1 = anatomy_box(view.grey)
    assert x0 >= view.limb[2] - SLACK and x1 <= view.limb[3] + SLACK  # got the field: 45 .. 467


def test_padding_with_collimation_is_left_out() -> None:
    view = radiograph(0, padding=("top",), collimation=("left", "right"), text=True)
    assert problems(view, anatomy_box(view.grey)) == []


# -- to_model_input: crop, CLAHE ------------------------------------------------------------------


def shown(x: np.ndarray) -> np.ndarray:
    """The [0, 1] grey of a model input (channel 0, normalisation undone)."""
    return x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


def test_crop_makes_the_limb_fill_the_input() -> None:
    view = radiograph(0, text=True)
    cropped = to_model_input(view.grey, Preprocessing(crop=True))
    whole = to_model_input(view.grey, Preprocessing(crop=False))
    assert cropped.shape == whole.shape == (3, 224, 224) and cropped.dtype == np.float32
    y0, y1, x0, x1 = anatomy_box(view.grey)
    assert np.array_equal(cropped, to_model_input(view.grey[y0:y1, x0:x1], Preprocessing(crop=False)))
    # the fraction of the middle row that is limb (tissue ~100/255 or brighter; background ~25/255)
    limb_in_view = (view.grey[SIZE // 2] > 64).mean()
    assert 0.2 < limb_in_view < 0.3
    assert (shown(whole)[112] > 0.25).mean() == pytest.approx(limb_in_view, abs=0.02)
    # cropped: the box is as wide as the limb's widest (bottom) end, the middle row is a little narrower
    assert (shown(cropped)[112] > 0.25).mean() > 0.75
    assert (shown(cropped) > 0.25).mean() > 2.5 * (shown(whole) > 0.25).mean()


def test_crop_leaves_collimation_out_of_the_input() -> None:
    view = radiograph(0, collimation=SIDES, text=True)
    cropped = shown(to_model_input(view.grey, Preprocessing(crop=True)))
    whole = shown(to_model_input(view.grey, Preprocessing(crop=False)))
    for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):  # collimation is 230/255
        assert whole[edge].mean() > 0.85 and cropped[edge].mean() < 0.6


def _low_contrast() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    grey = 110 + 6 * np.sin(x / 9.0) * np.sin(y / 13.0) + rng.normal(0, 1, (SIZE, SIZE))
    grey[:, 200:300] += 8  # a faint limb
    return np.clip(grey, 0, 255).astype(np.uint8)


def test_clahe_raises_local_contrast() -> None:
    grey = _low_contrast()
    plain = to_model_input(grey, Preprocessing(crop=False, clahe=False))
    equalised = to_model_input(grey, Preprocessing(crop=False, clahe=True))
    assert equalised.shape == (3, 224, 224) and equalised.dtype == np.float32
    assert np.allclose(shown(equalised), equalised[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1], atol=1e-5)
    region = np.s_[60:160, 60:160]
    assert shown(equalised)[region].std() > 2 * shown(plain)[region].std()
    assert 0 <= shown(equalised).min() and shown(equalised).max() <= 1 + 1e-5
    # a stronger clip limit, more contrast
    stronger = to_model_input(grey, Preprocessing(crop=False, clahe=True, clahe_clip_limit=4.0))
    assert shown(stronger)[region].std() > shown(equalised)[region].std()


def test_clahe_follows_the_crop() -> None:
    view = radiograph(1, collimation=SIDES)
    y0, y1, x0, x1 = anatomy_box(view.grey)
    both = to_model_input(view.grey, Preprocessing(crop=True, clahe=True))
    alone = to_model_input(view.grey[y0:y1, x0:x1], Preprocessing(crop=False, clahe=True))
    assert np.array_equal(both, alone)


# -- resize -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "inner"), [(100, 200, (112, 224)), (200, 100, (224, 112)),
                                               (50, 100, (112, 224)), (100, 300, (75, 224))])
def test_letterbox_keeps_the_aspect_with_centred_black_padding(h: int, w: int,
                                                               inner: tuple[int, int]) -> None:
    out = resize(np.full((h, w), 200, np.uint8), 224, "letterbox")
    assert out.shape == (224, 224) and out.dtype == np.uint8
    rows, cols = np.nonzero(out)
    assert (rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()) == inner
    assert (out[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 200).all()
    assert (out == 0).sum() == 224 * 224 - inner[0] * inner[1]
    # centred: the padding before and after differ by at most one pixel
    assert abs(rows.min() - (223 - rows.max())) <= 1 and abs(cols.min() - (223 - cols.max())) <= 1


def test_squash_fills_and_letterbox_keeps_a_circle_round() -> None:
    grey = np.zeros((200, 400), np.uint8)
    cv2.circle(grey, (200, 100), 80, 255, -1)
    for mode, ratio in (("letterbox", 1.0), ("squash", 2.0)):  # squash: x 0.56, y 1.12
        out = resize(grey, 224, mode)
        rows, cols = np.nonzero(out > 127)
        height, width = rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()
        assert height / width == pytest.approx(ratio, abs=0.03), mode
    squashed = resize(np.full((200, 400), 200, np.uint8), 224, "squash")
    assert squashed.shape == (224, 224) and (squashed == 200).all()


def test_letterbox_through_to_model_input() -> None:
    x = to_model_input(np.full((100, 200), 255, np.uint8), Preprocessing(crop=False, resize="letterbox"))
    grey = shown(x)
    assert np.allclose(grey[:56], 0, atol=1e-5) and np.allclose(grey[168:], 0, atol=1e-5)
    assert np.allclose(grey[56:168], 1, atol=1e-5)


# -- the whole path, from a DICOM file ----------------------------------------------------------


def test_prepare_file_crops_painted_collimation_and_text(tmp_path: Path) -> None:
    ds = make_instance(StudySpec(views=1, rows=SIZE, columns=SIZE, seed=3), 0)
    stored = ds.pixel_array.astype(np.int32)
    rng = np.random.default_rng(0)
    border = 40
    collimation = np.clip(3700 + rng.normal(0, 20, stored.shape), 0, 4095).astype(np.int32)
    for where in (np.s_[:border], np.s_[-border:], np.s_[:, :border], np.s_[:, -border:]):
        stored[where] = collimation[where]
    text = np.zeros(stored.shape, np.uint8)
    cv2.putText(text, "L", (border + 10, border + 45), FONT, 1.4, 1, 3)
    cv2.putText(text, "R 12/03/2026 CR", (SIZE - border - 115, SIZE - border - 12), FONT, 0.4, 1, 1)
    stored[text > 0] = 4095
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path = tmp_path / "painted.dcm"
    ds.save_as(path, enforce_file_format=True)

    cropped = prepare_file(path, Preprocessing(crop=True))
    whole = prepare_file(path, Preprocessing(crop=False))
    grey = to_display(pydicom.dcmread(path))
    assert grey.shape == (SIZE, SIZE)
    assert np.array_equal(cropped, to_model_input(grey, Preprocessing(crop=True)))
    # the synthetic soft tissue fills the field: the box is (nearly) the field, no collimation
    y0, y1, x0, x1 = anatomy_box(grey)
    assert border - 3 <= y0 and y1 <= SIZE - border + 3 and border - 3 <= x0 and x1 <= SIZE - border + 3
    assert (y1 - y0) >= 0.9 * (SIZE - 2 * border) and (x1 - x0) >= 0.9 * (SIZE - 2 * border)
    # collimation at 3700/4095 (~0.9) lines the uncropped input, not the cropped one
    for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
        assert shown(whole)[edge].mean() > 0.85
        assert shown(cropped)[edge].mean() < 0.7
