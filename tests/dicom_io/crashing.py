"""A preparation task that kills its worker process on one file: how a codec crash looks to the pool.

It lives in an importable module (not a test file) because spawned workers import it by name.
"""
from __future__ import annotations

import os
from pathlib import Path

from dicom_io.prepare import PreparedView, prepare_view


def crash_on_marked_files(path, prep, opts, rules) -> PreparedView:  # type: ignore[no-untyped-def]
    if Path(path).name.startswith("crash"):
        os._exit(3)  # what a segfault in a decoder looks like from outside
    return prepare_view(path, prep, opts, rules)


def log_then_prepare(path, prep, opts, rules) -> PreparedView:  # type: ignore[no-untyped-def]
    """Logs one warning from inside the worker, then prepares as usual."""
    import logging

    logging.getLogger("dicom_io.prepare").warning("preparing %s", Path(path).name)
    return prepare_view(path, prep, opts, rules)


def hang_on_marked_files(path, prep, opts, rules) -> PreparedView:  # type: ignore[no-untyped-def]
    """A decoder caught in an endless loop on files named hang*."""
    import time

    if Path(path).name.startswith("hang"):
        while True:
            time.sleep(1)
    return prepare_view(path, prep, opts, rules)
