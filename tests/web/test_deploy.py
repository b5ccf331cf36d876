"""deploy/radtriage.service: systemd accepts it, and it keeps its hardening."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "deploy" / "radtriage.service"


def _service_section() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_the_unit_is_hardened():
    s = _service_section()
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": "", "User": "radtriage",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
                       "ReadWritePaths": "/var/lib/radtriage", "KillSignal": "SIGTERM"}.items():
        assert s.get(key) == [value], key
    assert "MemoryMax" in s and "SystemCallFilter" in s
    assert s["ExecStart"][0].endswith("radtriage serve --config /etc/radtriage/config.yaml")


def test_systemd_analyze_verify_accepts_it(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    radtriage = shutil.which("radtriage") or str(ROOT / ".venv" / "bin" / "radtriage")
    unit = tmp_path / "radtriage.service"  # the same unit, pointing at a binary that exists here
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(
        "/opt/radtriage/.venv/bin/radtriage", radtriage), encoding="utf-8")
    r = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if str(unit) in line or "radtriage.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
