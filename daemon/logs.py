"""Logging set-up (handlers only here) and the study-tagged logger adapter.

Every record carries ``study`` (the Study Instance UID, or ``-``). Patient names and IDs are
never logged by radtriage; with ``logging.phi: false`` pynetdicom is also told not to log
request identifiers.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, MutableMapping

from pynetdicom import _config as pynetdicom_config

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [study=%(study)s] %(message)s"


class StudyAdapter(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


def study_logger(logger: logging.Logger, study_uid: str | None) -> StudyAdapter:
    return StudyAdapter(logger, {"study": study_uid or "-"})


class _StudyDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "study"):
            record.study = "-"
        return True


def setup_logging(level: str = "INFO", *, phi: bool = False, file: Path | None = None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_radtriage", False):
            root.removeHandler(handler)
            handler.close()
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler._radtriage = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_StudyDefault())
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom is chatty at INFO (every association); keep it to warnings unless debugging,
    # and never let it dump identifiers or data sets unless the admin allowed patient data.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "DEBUG" and phi else logging.WARNING)
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = phi
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = phi
    if not phi:
        # pydicom reports invalid values with the value itself (a birth date, a name): keep
        # those messages out of the logs and out of stderr unless patient data is allowed
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    # alembic and highdicom narrate every step at INFO; apscheduler warns whenever a tick is
    # skipped because the previous one still runs, which is normal here
    for noisy, lvl in (("alembic", logging.WARNING), ("highdicom", logging.WARNING),
                       ("apscheduler", logging.ERROR)):
        logging.getLogger(noisy).setLevel(lvl)
