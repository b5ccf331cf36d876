"""A view's heatmap as stored beside its score: float16, zlib-compressed, with its shape.

The grid is the model's last feature map (7 x 7 for a 224 px DenseNet input): a few hundred
bytes. :mod:`dicom_io.geometry` maps it onto the view when a summary image, an SR region or a
web page needs it.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_MAGIC = b"RTH1"


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """2-D float array -> bytes (magic, height, width, zlib of float16 little-endian)."""
    hm = np.asarray(heatmap)
    if hm.ndim != 2 or hm.size == 0:
        raise ValueError(f"a heatmap is a non-empty 2-D array, not shape {hm.shape}")
    if not np.all(np.isfinite(hm)):
        raise ValueError("a heatmap with NaN or infinite values cannot be stored")
    h, w = hm.shape
    body = zlib.compress(hm.astype("<f2").tobytes(), 9)
    return _MAGIC + struct.pack("<HH", h, w) + body


def decode_heatmap(blob: bytes) -> np.ndarray:
    """What :func:`encode_heatmap` wrote -> float32 (height, width); ValueError when it is not."""
    if len(blob) < 8 or blob[:4] != _MAGIC:
        raise ValueError("not a stored radtriage heatmap")
    h, w = struct.unpack("<HH", blob[4:8])
    try:
        raw = zlib.decompress(blob[8:])
    except zlib.error as exc:
        raise ValueError(f"a stored heatmap is corrupt: {exc}") from exc
    if len(raw) != 2 * h * w:
        raise ValueError(f"a stored heatmap holds {len(raw)} bytes, not {2 * h * w} for {h} x {w}")
    return np.frombuffer(raw, dtype="<f2").reshape(h, w).astype(np.float32)
