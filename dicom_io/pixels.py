"""From a stored radiograph to the float32 tensor the model was trained on.

Basic pipeline (a later step completes it): decode through pydicom's pixel handlers, Modality
LUT, VOI LUT (the first window, else a robust percentile window), MONOCHROME1 inverted so bone
is bright, 8 bit, resized to ``size`` x ``size`` (squashed, as the MURA models were trained),
ImageNet normalisation to three channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_io.errors import InvalidInstance, PixelDecodeError, UnsupportedInstance

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Preprocessing:
    size: int = 224
    mean: tuple[float, float, float] = tuple(IMAGENET_MEAN.tolist())  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(IMAGENET_STD.tolist())  # type: ignore[assignment]

    @classmethod
    def from_card(cls, card: dict) -> "Preprocessing":
        """The preprocessing a model card records (missing keys: the MURA defaults)."""
        default = cls()
        return cls(size=int(card.get("size", default.size)),
                   mean=tuple(card.get("mean", default.mean)),  # type: ignore[arg-type]
                   std=tuple(card.get("std", default.std)))  # type: ignore[arg-type]


def read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
        raise InvalidInstance(f"not a readable DICOM file: {exc}") from exc


def to_display(ds: Dataset) -> np.ndarray:
    """Decode and apply the grayscale display pipeline; return uint8 HxW, bone bright."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnsupportedInstance("multi-frame images are not scored")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing/unsupported codecs
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts) or "unknown transfer syntax"
        raise PixelDecodeError(f"cannot decode pixel data ({name}): {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        grey = cv2.cvtColor(np.ascontiguousarray(arr).astype(np.uint8), cv2.COLOR_RGB2GRAY)
        return grey
    if arr.ndim != 2:
        raise UnsupportedInstance(f"pixel array of shape {arr.shape} is not a single grey image")
    values = apply_modality_lut(arr, ds).astype(np.float32)
    if "WindowCenter" in ds and "WindowWidth" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0).astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = np.percentile(values, (0.5, 99.5)).astype(float)
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def to_model_input(grey: np.ndarray, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """uint8 HxW -> float32 3 x size x size, ImageNet-normalised."""
    resized = cv2.resize(grey, (prep.size, prep.size), interpolation=cv2.INTER_AREA)
    x = resized.astype(np.float32) / 255.0
    mean = np.asarray(prep.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(prep.std, dtype=np.float32)[:, None, None]
    return ((np.broadcast_to(x, (3, prep.size, prep.size)) - mean) / std).astype(np.float32)


def prepare_file(path: Path, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """Read, decode and prepare one stored view; raises a dicom_io error saying why not."""
    return to_model_input(to_display(read_dataset(path)), prep)
