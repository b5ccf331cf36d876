"""No patient name or ID in any log the suite wrote with ``logging.phi: false`` (the default).

Runs after every other test (marker ``last``, see tests/conftest.py): it reads the log of every
record logged in the test process and every ``radtriage.log`` and ``stderr.log`` a daemon wrote
under pytest's temporary folder, and looks for the patient names and IDs the tests' data sets
carry. Run alone it scans what is there: a run of the whole suite is the one that counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IN_PROCESS_LOG, PHI_PATTERN


def _daemon_logs(base: Path) -> list[Path]:
    return sorted(p for name in ("radtriage.log", "stderr.log") for p in base.rglob(name))


def test_the_pattern_finds_patient_data() -> None:
    """The scan is not vacuous: each form the tests' patient data takes is found."""
    for line in ("patient PHANTOM^TEST", "PHANTOM-00042 arrived", "name PHANTOM^0007",
                 "Doe^Jane", "id PID-0042", "(0010,0010) PN [PHANTOM TEST]"):
        assert PHI_PATTERN.search(line), line
    for line in ("phantoms-train", "study=1.2.826.0.1.3680043", "PHANTOM model notice"):
        assert not PHI_PATTERN.search(line), line


@pytest.mark.last
def test_no_patient_data_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    logs = [IN_PROCESS_LOG, *_daemon_logs(tmp_path_factory.getbasetemp())]
    found = []
    lines = 0
    for path in logs:
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, start=1):
                lines += 1
                if PHI_PATTERN.search(line):
                    found.append(f"{path}:{n}: {line.strip()[:200]}")
    print(f"scanned {len(logs)} log file(s), {lines} line(s), for patient names and IDs")
    assert not found, "patient data in the logs:\n" + "\n".join(found[:20])
