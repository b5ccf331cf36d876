"""Where a model input pixel, or a heatmap cell, lies on the original view (pure numpy and cv2).

A view reaches the model through three steps (:func:`dicom_io.pixels.to_model_input`): shown at
a working resolution (``display``: the original Rows x Columns scaled by a factor), cropped to
the anatomy (``crop``), then squashed or letterboxed to ``size`` x ``size``. A
:class:`ViewGeometry` records those steps so a class activation map computed on the model input
can be drawn on the view (:meth:`ViewGeometry.heatmap_on_display`) and its peak region given in
the original image's pixel coordinates (:meth:`ViewGeometry.input_box_to_original`), which is
what an SR's SCOORD and a GSPS graphic need.

Coordinates are (x, y) = (column, row), continuous: pixel (c, r) covers [c, c + 1) x [r, r + 1),
so a box (x0, y0, x1, y1) on an image of W x H columns and rows lies within [0, W] x [0, H].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ViewGeometry:
    """How one frame of a view became the model's input."""

    rows: int  #: the original image's Rows
    columns: int  #: and Columns
    display_height: int  #: the view as shown at the working resolution
    display_width: int
    crop: tuple[int, int, int, int]  #: (y0, y1, x0, x1) on the display: the anatomy box
    size: int  #: model input is size x size
    resize: Literal["squash", "letterbox"] = "squash"

    def __post_init__(self) -> None:
        y0, y1, x0, x1 = self.crop
        if not (0 <= y0 < y1 <= self.display_height and 0 <= x0 < x1 <= self.display_width):
            raise ValueError(f"crop {self.crop} does not fit a {self.display_width} x "
                             f"{self.display_height} display")
        if min(self.rows, self.columns, self.size) < 1:
            raise ValueError("rows, columns and size must be positive")

    def to_dict(self) -> dict[str, object]:
        return {"rows": self.rows, "columns": self.columns, "display_height": self.display_height,
                "display_width": self.display_width, "crop": list(self.crop), "size": self.size,
                "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict) -> "ViewGeometry":  # type: ignore[type-arg]
        return cls(rows=int(d["rows"]), columns=int(d["columns"]),
                   display_height=int(d["display_height"]), display_width=int(d["display_width"]),
                   crop=tuple(int(v) for v in d["crop"]), size=int(d["size"]),  # type: ignore[arg-type]
                   resize=d.get("resize", "squash"))

    # -- the content rectangle of the model input -------------------------------------------

    def _inner(self) -> tuple[float, float, float, float]:
        """(left, top, width, height) of the cropped view inside the model input."""
        y0, y1, x0, x1 = self.crop
        h, w = y1 - y0, x1 - x0
        if self.resize == "squash":
            return 0.0, 0.0, float(self.size), float(self.size)
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        return float((self.size - nw) // 2), float((self.size - nh) // 2), float(nw), float(nh)

    def input_box_to_display(self, box: Box) -> Box:
        """A box on the model input -> the same region on the display (clipped to the crop)."""
        left, top, iw, ih = self._inner()
        y0, y1, x0, x1 = self.crop
        sx, sy = (x1 - x0) / iw, (y1 - y0) / ih
        bx0, by0, bx1, by1 = box
        out = (x0 + (bx0 - left) * sx, y0 + (by0 - top) * sy,
               x0 + (bx1 - left) * sx, y0 + (by1 - top) * sy)
        return (min(max(out[0], x0), x1), min(max(out[1], y0), y1),
                min(max(out[2], x0), x1), min(max(out[3], y0), y1))

    def display_box_to_original(self, box: Box) -> Box:
        sx, sy = self.columns / self.display_width, self.rows / self.display_height
        return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

    def input_box_to_original(self, box: Box) -> Box:
        """A box on the model input -> the original image's pixel coordinates, rounded out to
        whole pixels and clipped to the image."""
        x0, y0, x1, y1 = self.display_box_to_original(self.input_box_to_display(box))
        return (float(max(0, np.floor(x0))), float(max(0, np.floor(y0))),
                float(min(self.columns, np.ceil(x1))), float(min(self.rows, np.ceil(y1))))

    def heatmap_on_display(self, heatmap: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        """A heatmap over the model input (any grid, e.g. DenseNet's 7 x 7) drawn on the display,
        or on an image of ``shape`` (height, width) showing the same view at another scale:
        float32, bilinear, 0 outside the crop."""
        h, w = shape if shape is not None else (self.display_height, self.display_width)
        fy, fx = h / self.display_height, w / self.display_width
        hm = np.asarray(heatmap, dtype=np.float32)
        on_input = cv2.resize(hm, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        left, top, iw, ih = self._inner()
        inner = on_input[int(top):int(top + ih), int(left):int(left + iw)]
        y0, y1, x0, x1 = self.crop
        ty0, ty1 = int(round(y0 * fy)), max(int(round(y0 * fy)) + 1, int(round(y1 * fy)))
        tx0, tx1 = int(round(x0 * fx)), max(int(round(x0 * fx)) + 1, int(round(x1 * fx)))
        ty1, tx1 = min(ty1, h), min(tx1, w)
        out = np.zeros((h, w), dtype=np.float32)
        if ty1 > ty0 and tx1 > tx0 and inner.size:
            out[ty0:ty1, tx0:tx1] = cv2.resize(inner, (tx1 - tx0, ty1 - ty0),
                                               interpolation=cv2.INTER_LINEAR)
        return out


def normalise_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """Scale a heatmap to [0, 1] (min to max); a flat map is all zeros."""
    hm = np.asarray(heatmap, dtype=np.float32)
    lo, hi = float(hm.min()), float(hm.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12:
        return np.zeros_like(hm)
    return (hm - lo) / (hi - lo)


def peak_box(heatmap: np.ndarray, size: int, *, level: float = 0.5) -> Box:
    """The peak region of a heatmap over a ``size`` x ``size`` model input: the bounding box of
    the connected region around the maximum where the bilinearly upsampled, min-max normalised
    map is at least ``level``. (x0, y0, x1, y1) in model input pixels."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    up = cv2.resize(normalise_heatmap(heatmap), (size, size), interpolation=cv2.INTER_LINEAR)
    mask = (up >= level).astype(np.uint8)
    if not mask.any():  # a flat map: no peak, the whole input
        return (0.0, 0.0, float(size), float(size))
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    py, px = np.unravel_index(int(np.argmax(up)), up.shape)
    ys, xs = np.nonzero(labels == labels[py, px])
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def peak_point(heatmap: np.ndarray, geometry: ViewGeometry) -> tuple[float, float]:
    """Where a heatmap over the model input is highest, in the original view's pixel coordinates
    (x, y): the maximum of the bilinearly upsampled map, the centre of that input pixel."""
    up = cv2.resize(np.asarray(heatmap, dtype=np.float32), (geometry.size, geometry.size),
                    interpolation=cv2.INTER_LINEAR)
    py, px = np.unravel_index(int(np.argmax(up)), up.shape)
    x0, y0, x1, y1 = geometry.display_box_to_original(
        geometry.input_box_to_display((px, py, px + 1.0, py + 1.0)))
    return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
