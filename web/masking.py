"""The effective configuration with its secrets masked, for the config page and ``/api/config``.

Masked: every value whose key names a secret (password, secret, token, hash, key contents: a
``*_file`` path is shown, since a path is not the key), every HTTP header value of a DICOMweb
destination (they carry ``Authorization``), and the password inside a database URL.

Each destination shows the keys of its own ``type`` only (:func:`daemon.config.destination_keys`):
the one ``Destination`` model holds every type's fields, and a DICOM destination listed with the
HL7 defaults (``message: ORM^O01``) and ``url: null`` read as settings it has.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "********"
_USERINFO = re.compile(r"(://[^/:@]*:)[^/@]*@")
_SECRET_KEY = re.compile(r"(password|secret|token|hash|api_key)", re.IGNORECASE)


def mask_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return MASK  # not a URL SQLAlchemy reads: it may be anything, show none of it


def mask(value: Any, key: str = "") -> Any:
    """A copy of ``value`` (plain data: dicts, lists, scalars) with secrets replaced by ``MASK``
    (a secret that is not set, None, stays None so the page says it is not set)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "headers" and isinstance(v, dict):
                out[k] = {h: MASK for h in v}
            elif k == "url" and key == "database" and isinstance(v, str):
                out[k] = mask_url(v)
            elif k == "url" and isinstance(v, str):
                out[k] = _USERINFO.sub(rf"\g<1>{MASK}@", v)  # https://user:password@host
            elif _SECRET_KEY.search(str(k)) and not str(k).endswith("_file") and v is not None:
                out[k] = MASK
            else:
                out[k] = mask(v, str(k))
        return out
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    return value


def masked_config(config) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """``config`` (a :class:`daemon.config.Config`) as JSON-able data with secrets masked, each
    destination with the keys of its type only."""
    from daemon.config import destination_keys

    data = config.model_dump(mode="json")
    data["destinations"] = [{k: d[k] for k in destination_keys(d["type"])}
                            for d in data.get("destinations", [])]
    return mask(data)
