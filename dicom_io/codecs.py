"""Which transfer syntaxes the pixel stack (pydicom + pylibjpeg/openjpeg/libjpeg) can decode.

The receiver accepts exactly these, so nothing is received that could not be scored.
"""

from __future__ import annotations

from pydicom import uid
from pydicom.pixels import get_decoder

#: Uncompressed first (preferred when a sender offers several), then the compressed syntaxes.
CANDIDATES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.RLELossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
)


def decodable_transfer_syntaxes() -> list[str]:
    """The candidates for which a pixel decoder with a working plugin is installed."""
    out = []
    for ts in CANDIDATES:
        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if available:
            out.append(ts)
    return out
