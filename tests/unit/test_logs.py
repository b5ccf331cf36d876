"""daemon.logs: the study tag on every record, and no patient data from libraries."""

from __future__ import annotations

import logging

import pytest
from pynetdicom import _config as pynetdicom_config

from daemon.logs import setup_logging, study_logger


pytestmark = pytest.mark.usefixtures("restore_logging")


def _flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()


def _warn_and_read(log_file, warn) -> str:  # type: ignore[no-untyped-def]
    """Run ``warn`` with every warning shown (not turned into an error), return the log."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warn()
    _flush()
    return log_file.read_text()


def test_records_carry_the_study_uid(tmp_path):
    setup_logging("INFO", file=tmp_path / "r.log")
    study_logger(logging.getLogger("daemon.test"), "1.2.3.4").info("scored")
    logging.getLogger("daemon.test").info("no study")
    _flush()
    lines = (tmp_path / "r.log").read_text().splitlines()
    assert "[study=1.2.3.4] scored" in lines[0] and "[study=-] no study" in lines[1]


def test_without_phi_libraries_cannot_log_identifiers_or_values(tmp_path):
    setup_logging("DEBUG", phi=False, file=tmp_path / "r.log")
    assert pynetdicom_config.LOG_REQUEST_IDENTIFIERS is False
    assert pynetdicom_config.LOG_RESPONSE_IDENTIFIERS is False
    assert logging.getLogger("pynetdicom").getEffectiveLevel() >= logging.WARNING
    # pydicom's "Invalid value for VR DA: '1970-03-14'" carries the value itself
    assert logging.getLogger("pydicom").getEffectiveLevel() >= logging.ERROR


@pytest.mark.phi_allowed
def test_with_phi_pynetdicom_may_log_identifiers(tmp_path):
    setup_logging("DEBUG", phi=True, file=tmp_path / "r.log")
    assert pynetdicom_config.LOG_REQUEST_IDENTIFIERS is True
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.DEBUG


# -- repeated errors (issue 17, finding 17: an outage flooded the log) ---------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _records(limiter, clock, times, make):  # type: ignore[no-untyped-def]
    """Feed one record at each of ``times``; return those the limiter let through."""
    out = []
    for t in times:
        clock.now = 1000.0 + t
        record = make()
        if limiter.filter(record):
            out.append(record)
    return out


def _outage_record() -> logging.LogRecord:
    try:
        raise ConnectionRefusedError("connection to 127.0.0.1:5432 refused")
    except ConnectionRefusedError:
        import sys

        return logging.LogRecord("daemon.service", logging.ERROR, __file__, 1,
                                 "completion sweep failed; retried at the next tick", None,
                                 sys.exc_info())


def test_the_same_error_is_logged_once_then_with_a_count_at_a_back_off_rate():
    from daemon.logs import RepeatLimiter

    clock = _Clock()
    limiter = RepeatLimiter(first_s=1.0, max_s=60.0, clock=clock)
    # four a second for 30 s, as the database outage did
    passed = _records(limiter, clock, [n * 0.25 for n in range(120)], _outage_record)
    assert 4 <= len(passed) <= 7, len(passed)  # at 0, ~1, ~3, ~7, ~15 (and ~31) s
    assert passed[0].exc_info is not None  # the first one keeps its traceback
    assert all(r.exc_info is None for r in passed[1:])  # repeats do not
    assert "repeated" in passed[1].getMessage() and "repeated" not in passed[0].getMessage()
    counts = [int(r.getMessage().split("repeated ")[1].split()[0]) for r in passed[1:]]
    assert sum(counts) + len(passed) + limiter.held() == 120  # every record is accounted for
    assert counts == sorted(counts)  # the back-off grows


def test_a_quiet_error_starts_afresh_and_distinct_errors_are_not_merged():
    from daemon.logs import RepeatLimiter

    clock = _Clock()
    limiter = RepeatLimiter(first_s=1.0, max_s=10.0, clock=clock)
    assert len(_records(limiter, clock, [0, 0.1, 0.2], _outage_record)) == 1
    assert len(_records(limiter, clock, [30], _outage_record)) == 1  # quiet for longer than max_s

    def refused(addr: str):  # type: ignore[no-untyped-def]
        return lambda: logging.LogRecord("daemon.receiver", logging.WARNING, __file__, 1,
                                         "rejected association from %r at %s:%s: %s",
                                         ("PACS", addr, 40000 + int(clock.now * 10) % 1000,
                                          "calling AE title not recognised"), None)

    # another address is another kind; a changing port number is not
    assert len(_records(limiter, clock, [40, 40.1], refused("10.0.0.1"))) == 1
    assert len(_records(limiter, clock, [40.2], refused("10.0.0.2"))) == 1
    # INFO and DEBUG are never limited
    info = lambda: logging.LogRecord("x", logging.INFO, __file__, 1, "scored", None, None)  # noqa: E731
    assert len(_records(limiter, clock, [50, 50, 50], info)) == 3


def test_an_outage_writes_a_few_lines_to_the_log_file(tmp_path):
    setup_logging("INFO", file=tmp_path / "r.log")
    log = logging.getLogger("daemon.service")
    for _ in range(200):
        try:
            raise OSError("database unreachable")
        except OSError:
            log.exception("dispatch failed; retried at the next tick")
    _flush()
    text = (tmp_path / "r.log").read_text()
    assert text.count("Traceback") == 1
    assert text.count("dispatch failed") == 1  # all within the first second


def test_python_warnings_go_through_logging_without_their_text(tmp_path):
    """highdicom warned 'The string "DOE" is unlikely to represent the intended person name'
    straight to stderr (the journal under systemd)."""
    import warnings

    setup_logging("INFO", phi=False, file=tmp_path / "r.log")
    text = _warn_and_read(tmp_path / "r.log", lambda: warnings.warn(
        'The string "SECRETPATIENT" is unlikely to represent a person name', UserWarning))
    assert "py.warnings" in text and "UserWarning" in text and "text withheld" in text
    assert "SECRETPATIENT" not in text


def test_highdicom_person_name_warning_does_not_reach_stderr_or_the_log(tmp_path, capfd):
    from highdicom.valuerep import check_person_name

    setup_logging("INFO", phi=False, file=tmp_path / "r.log")
    text = _warn_and_read(tmp_path / "r.log", lambda: check_person_name("SECRETPATIENT"))
    out, err = capfd.readouterr()
    assert "SECRETPATIENT" not in out + err + text


@pytest.mark.phi_allowed
def test_with_phi_warnings_keep_their_text(tmp_path):
    import warnings

    setup_logging("INFO", phi=True, file=tmp_path / "r.log")
    assert "19790230" in _warn_and_read(tmp_path / "r.log", lambda: warnings.warn(
        "value 19790230 is not a date", UserWarning))


def test_database_errors_do_not_carry_statement_parameters(tmp_path):
    """A failed statement's parameters (accession numbers, UIDs) would reach logs and events."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from db import Database

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(SQLAlchemyError) as info:
            with db.session() as s:
                s.execute(text("SELECT * FROM no_such_table WHERE x = :v"), {"v": "ACC-SECRET-42"})
        assert "ACC-SECRET-42" not in str(info.value)
    finally:
        db.dispose()


def test_control_characters_in_a_message_cannot_forge_a_line(tmp_path):
    """Issue 17, finding 13: a newline in a SOP Instance UID forged a log line; NULs went raw."""
    setup_logging("INFO", file=tmp_path / "r.log")
    uid = "1.2.3\n2026-12-06 00:00:00,000 INFO    daemon.receiver [study=-] forged\x00\u2028\x85"
    logging.getLogger("daemon.receiver").warning("refused %s", uid)
    _flush()
    raw = (tmp_path / "r.log").read_bytes()
    lines = raw.decode("utf-8").split("\n")
    assert len([line for line in lines if line]) == 1
    assert b"\x00" not in raw and "\u2028".encode() not in raw and "\x85".encode() not in raw
    assert "1.2.3\\n2026" in lines[0] and "\\x00\\u2028\\x85" in lines[0]


def test_a_traceback_keeps_its_frames_but_not_a_library_message(tmp_path):
    """Review of issue 17: ``log.exception`` printed the exception's message, which a library
    may fill with a header value; radtriage's own messages and the OS's are kept."""
    from dicom_io.errors import InvalidInstance

    setup_logging("INFO", phi=False, file=tmp_path / "r.log")
    log = logging.getLogger("dicom_io.prepare")
    date, inner_value = "1979" + "0230", "SECRET" + "-INNER"  # values, not in the source lines
    for exc in (ValueError(f"Unable to convert {date!r} to 'DA' object"),
                InvalidInstance("Rows is missing"), FileNotFoundError(2, "No such file")):
        try:
            try:
                raise KeyError(inner_value)
            except KeyError as inner:
                raise exc from inner
        except Exception:
            log.exception("a view could not be prepared")
    _flush()
    text = (tmp_path / "r.log").read_text()
    assert date not in text and inner_value not in text
    assert text.count("(message withheld: logging.phi is false)") == 4  # ValueError, 3 KeyErrors
    assert "InvalidInstance: Rows is missing" in text and "No such file" in text
    assert text.count("The above exception was the direct cause") == 3
    assert "test_a_traceback_keeps_its_frames" in text  # the frames are there


@pytest.mark.phi_allowed
def test_with_phi_a_traceback_is_whole(tmp_path):
    setup_logging("INFO", phi=True, file=tmp_path / "r.log")
    try:
        raise ValueError("Unable to convert '19790230' to 'DA' object")
    except ValueError:
        logging.getLogger("x").exception("failed")
    _flush()
    assert "ValueError: Unable to convert '19790230'" in (tmp_path / "r.log").read_text()
