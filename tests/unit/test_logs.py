"""daemon.logs: the study tag on every record, and no patient data from libraries."""

from __future__ import annotations

import logging

import pytest
from pynetdicom import _config as pynetdicom_config

from daemon.logs import setup_logging, study_logger


pytestmark = pytest.mark.usefixtures("restore_logging")


def test_records_carry_the_study_uid(tmp_path):
    setup_logging("INFO", file=tmp_path / "r.log")
    study_logger(logging.getLogger("daemon.test"), "1.2.3.4").info("scored")
    logging.getLogger("daemon.test").info("no study")
    for h in logging.getLogger().handlers:
        h.flush()
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
