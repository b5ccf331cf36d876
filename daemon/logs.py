"""Logging set-up (handlers only here) and the study-tagged logger adapter.

Every record carries ``study`` (the Study Instance UID, or ``-``). Patient names and IDs are
never logged by radtriage; with ``logging.phi: false`` pynetdicom is also told not to log
request identifiers, and Python warnings (which go through logging, ``py.warnings``) keep their
category and origin but not their text, which may quote a value (highdicom's "The string
"DOE" is unlikely to represent the intended person name").

The same error repeated is logged once, with its traceback, then summarised with a count at a
back-off rate (:class:`RepeatLimiter`): a database outage that fails four jobs a second for
half a minute writes a dozen lines, not a megabyte of tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, MutableMapping

from pynetdicom import _config as pynetdicom_config

FORMAT = "%(asctime)s %(levelname)-7s %(name)s [study=%(study)s] %(message)s"


class StudyAdapter(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


def study_logger(logger: logging.Logger, study_uid: str | None) -> StudyAdapter:
    return StudyAdapter(logger, {"study": study_uid or "-"})


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with control characters (but tab) and Unicode line separators written as
    escapes (``\\n``, ``\\x00``, ``\\u2028``): a value from the network cannot start a
    forged log line or hide in one."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1] if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def withheld_traceback(exc: BaseException) -> str:
    """A traceback of ``exc`` and of the exceptions it was raised from, every frame as Python
    prints it, but each exception's message only as :func:`dicom_io.errors.describe` gives it
    without patient data (its type, where it was raised, the attribute: a library's message may
    quote a birth date or a name)."""
    from dicom_io.errors import describe

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    blocks = []
    for inner, outer in zip(reversed(chain), [*reversed(chain[:-1]), None]):
        text = describe(inner)
        if text == describe(inner, phi=True):
            last = text
        else:
            last = f"{text} (message withheld: logging.phi is false)"
        blocks.append("Traceback (most recent call last):\n"
                      + "".join(traceback.format_tb(inner.__traceback__)) + last)
        if outer is not None:
            blocks.append("\nThe above exception was the direct cause of the following "
                          "exception:\n" if outer.__cause__ is inner else
                          "\nDuring handling of the above exception, another exception "
                          "occurred:\n")
    return "\n".join(blocks)


class OneLineFormatter(logging.Formatter):
    """Every record's message on one line (:func:`escape_controls`); a traceback follows on
    lines of its own as usual, with each exception's message withheld unless ``phi``
    (:func:`withheld_traceback`)."""

    def __init__(self, fmt: str, *, phi: bool = False) -> None:
        super().__init__(fmt)
        self.phi = phi

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        # logging caches a record's traceback text on the record for the next handler: another
        # handler's (with the message in it) must not be reused here, nor ours there
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatException(self, ei: Any) -> str:
        if self.phi or ei[1] is None:
            return super().formatException(ei)
        return withheld_traceback(ei[1])


class _StudyDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "study"):
            record.study = "-"
        return True


@dataclass
class _Repeats:
    next_at: float  #: when the next record of this kind may be written
    interval: float  #: the current back-off
    last_seen: float
    since: float  #: when the suppressed records began
    suppressed: int = 0


class RepeatLimiter(logging.Filter):
    """Lets the first record of a kind through, then one every ``first_s``, doubling up to
    ``max_s``, each saying how many were held back; a kind quiet for ``max_s`` starts afresh.

    Only WARNING and above are limited. A record's kind is its logger, level and message
    template, plus the type and text of the exception it carries (``exc_info`` or an exception
    among its arguments): the same outage failing for different instances is one kind. Without
    an exception, its non-numeric arguments count too (a port number changes with every
    connection, the address does not). Repeats are written without their traceback: it was
    written the first time.
    """

    def __init__(self, first_s: float = 1.0, max_s: float = 300.0, *, max_kinds: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.first_s, self.max_s, self.max_kinds, self.clock = first_s, max_s, max_kinds, clock
        self._kinds: OrderedDict[tuple[Any, ...], _Repeats] = OrderedDict()
        self._lock = threading.Lock()

    def held(self) -> int:
        """Records held back since their kind was last written."""
        with self._lock:
            return sum(k.suppressed for k in self._kinds.values())

    @staticmethod
    def kind(record: logging.LogRecord) -> tuple[Any, ...]:
        args = record.args if isinstance(record.args, tuple) else ()
        errors = [a for a in args if isinstance(a, BaseException)]
        if record.exc_info and record.exc_info[1] is not None:
            errors.append(record.exc_info[1])
        if errors:
            detail: tuple[Any, ...] = tuple(f"{type(e).__name__}: {e}" for e in errors)
        else:
            detail = tuple(str(a) for a in args if not isinstance(a, (int, float)))
        return (record.name, record.levelno, str(record.msg), detail)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key, now = self.kind(record), self.clock()
        with self._lock:
            seen = self._kinds.get(key)
            if seen is None or now - seen.last_seen > self.max_s:
                self._kinds[key] = _Repeats(now + self.first_s, self.first_s, now, now)
                self._kinds.move_to_end(key)
                while len(self._kinds) > self.max_kinds:
                    self._kinds.popitem(last=False)
                return True
            seen.last_seen = now
            if now < seen.next_at:
                seen.suppressed += 1
                return False
            held, span = seen.suppressed, now - seen.since
            seen.interval = min(seen.interval * 2, self.max_s)
            seen.next_at, seen.since, seen.suppressed = now + seen.interval, now, 0
        if held:
            record.msg = (f"{record.getMessage()} [repeated {held} more time(s) in the last "
                          f"{span:.0f} s; next report in {seen.interval:.0f} s at the most]")
            record.args = None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class WithheldWarningText(logging.Filter):
    """``py.warnings`` records (Python warnings, ``logging.captureWarnings``) keep the
    category, module and line but not the text, which may quote a patient's name or a value."""

    _WARNING_LINE = re.compile(r"^(?P<where>.*?:\d+): (?P<category>\w+): ")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            text = record.getMessage()
            m = self._WARNING_LINE.match(text)
            where = f"{m.group('category')} at {m.group('where')}" if m else "a warning"
            record.msg = f"{where} (text withheld: logging.phi is false)"
            record.args = None
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
    handler.setFormatter(OneLineFormatter(FORMAT, phi=phi))
    handler.addFilter(_StudyDefault())
    handler.addFilter(RepeatLimiter())
    if not phi:
        handler.addFilter(WithheldWarningText())
    root.addHandler(handler)
    logging.captureWarnings(True)
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
