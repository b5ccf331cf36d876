"""Every way ``radtriage serve`` can fail to start: one line on standard error, exit 1, no
traceback (issue 18, item 2); and ``radtriage check-config`` refuses the same configs with the
same line, or says what it leaves to ``serve`` (item 3).

Each case is a config in its own folder; ``serve`` runs as a subprocess (several at once: each
spends most of its time importing torch), ``check-config`` in-process on the same file.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import free_port
from tests.integration.conftest import RADTRIAGE, ROOT

pytestmark = pytest.mark.integration


@dataclass
class Case:
    """A bad config: ``expected`` is in the line both commands print; ``offline`` says whether
    check-config can see the problem (False: it needs the network or a port)."""

    expected: str
    config: dict
    offline: bool = True
    name: str = "config.yaml"
    files: dict[str, bytes] = field(default_factory=dict)


#: "{...}" in a value or an expected line is filled in by the fixture: the ports held busy, a
#: port nothing listens on, a token hash
CASES: dict[str, Case] = {
    "missing checkpoint": Case(
        "model.checkpoint: ", {"model": {"checkpoint": "missing.pt"}}),  # names the file
    "corrupt checkpoint": Case(
        "model.checkpoint: ", {"model": {"checkpoint": "broken.pt"}},
        files={"broken.pt": b"not a checkpoint\n" * 10}),
    "untrained, not allowed": Case(
        "model.checkpoint: ", {"model": {"allow_untrained": False}}),
    "preprocessing mismatch": Case(
        "preprocessing: crop.yaml and the model plumbing-small 0.0.1 disagree (config vs "
        "model): crop: false vs true", {"preprocessing": {"crop": False}}, name="crop.yaml"),
    "storage under a file": Case(
        "storage.path: cannot create ", {"storage": {"path": "afile/storage"}},
        files={"afile": b"x"}),
    "SQLite database under a file": Case(
        "database.url: cannot create ", {"database": {"url": "sqlite:///afile/radtriage.db"}},
        files={"afile": b"x"}),
    "database driver not installed": Case(
        "database.url: cannot use postgresql+nosuchdriver://radtriage:***@127.0.0.1/x: ",
        {"database": {"url": "postgresql+nosuchdriver://radtriage:secret@127.0.0.1/x"}}),
    "log file under a file": Case(
        "logging.file: cannot create ", {"logging": {"file": "afile/radtriage.log"}},
        files={"afile": b"x"}),
    "node TLS certificate missing": Case(
        "node.tls: cannot load cert_file ",
        {"node": {"tls": {"cert_file": "absent.pem", "key_file": "absent.key"}}}),
    "destination TLS CA missing": Case(
        "destinations: pacs: TLS: cannot load ca_file ",
        {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                           "tls": {"ca_file": "absent-ca.pem"}}]}),
    "DICOMweb CA missing": Case(
        "destinations: web: ca_file ",
        {"destinations": [{"name": "web", "type": "dicomweb", "url": "https://127.0.0.1/dicom-web",
                           "ca_file": "absent-ca.pem"}]}),
    "DICOM port in use": Case(
        "node.port: cannot listen on 127.0.0.1:{dicom_busy}: Address already in use",
        {"node": {"port": "{dicom_busy}"}}, offline=False),
    "web port in use": Case(
        "web.port: cannot listen on 127.0.0.1:{web_busy}: Address already in use",
        {"web": {"enabled": True, "token_hash": "{token_hash}", "port": "{web_busy}"}}, offline=False),
    "database unreachable": Case(
        "database.url: cannot use postgresql://radtriage:***@127.0.0.1:{pg_free}/radtriage: ",
        {"database": {"url": "postgresql://radtriage:secret@127.0.0.1:{pg_free}/radtriage"}},
        offline=False),
}


def _filled(value: object, values: dict[str, object]) -> object:
    if isinstance(value, dict):
        return {k: _filled(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, values) for v in value]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return values[value[1:-1]]
    return value.format(**values) if isinstance(value, str) else value


def _config(case: Case, checkpoint: Path, values: dict[str, object]) -> dict:
    data: dict = {
        "node": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"path": "storage", "min_free_mb": 0},
        "database": {"url": "sqlite:///radtriage.db"},
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "allow_untrained": True,
                  "warm_up": False},
        "preprocessing": {"size": 64},
        "decoding": {"workers": 1},
        "logging": {"file": "radtriage.log"},
    }
    for section, given in _filled(case.config, values).items():  # type: ignore[union-attr]
        if isinstance(given, dict):
            data.setdefault(section, {}).update(given)
        else:
            data[section] = given
    return data


@dataclass
class Run:
    case: Case
    folder: Path
    expected: str
    returncode: int
    stdout: str
    stderr: str


def _serve(folder: Path, case: Case, expected: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADTRIAGE_")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        proc = subprocess.run(RADTRIAGE + ["serve", "--config", case.name], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:  # it started: that is the failure to report
        return Run(case, folder, expected, -1, str(exc.stdout), f"still running after {exc.timeout} s")
    return Run(case, folder, expected, proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def runs(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """``serve`` on every case, four at a time, with the DICOM and web ports of the port cases
    held by another socket meanwhile."""
    from web.auth import hash_secret

    with socket.socket() as dicom_busy, socket.socket() as web_busy:
        for s in (dicom_busy, web_busy):
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        values: dict[str, object] = {
            "dicom_busy": dicom_busy.getsockname()[1], "web_busy": web_busy.getsockname()[1],
            "pg_free": free_port(), "token_hash": hash_secret("t" * 32)}
        jobs = []
        root = tmp_path_factory.mktemp("startup")
        for n, (title, case) in enumerate(CASES.items()):
            folder = root / f"case{n}"
            folder.mkdir()
            for name, content in case.files.items():
                (folder / name).write_bytes(content)
            data = _config(case, small_checkpoint, values)
            (folder / case.name).write_text(yaml.safe_dump(data), encoding="utf-8")
            jobs.append((title, folder, case, case.expected.format(**values)))
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {title: pool.submit(_serve, folder, case, expected)
                       for title, folder, case, expected in jobs}
            yield {title: f.result() for title, f in futures.items()}


@pytest.mark.parametrize("title", list(CASES))
def test_serve_fails_with_one_line_and_no_traceback(runs: dict[str, Run], title: str) -> None:
    run = runs[title]
    assert run.returncode == 1, f"{run.stderr}{run.stdout}"
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("radtriage: cannot start: ") and run.expected in lines[0], lines[0]
    assert "Traceback" not in run.stdout
    log = run.folder / "radtriage.log"
    if log.exists():
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text
        assert f"cannot start: {lines[0].split('cannot start: ', 1)[1]}" in text
        assert "start-up failed: closing what was started" in text


@pytest.mark.parametrize("title", list(CASES))
def test_check_config_refuses_what_serve_refuses(runs: dict[str, Run], title: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same config, the same line from check-config; or, for what needs the network or a
    port, an OK that names what it did not check."""
    from daemon.cli import main

    run = runs[title]
    for name in list(os.environ):
        if name.startswith("RADTRIAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(run.folder)
    out, err = io.StringIO(), io.StringIO()
    code = main(["check-config", run.case.name], out=out, err=err)
    if run.case.offline:
        assert (code, out.getvalue()) == (1, ""), err.getvalue()
        assert err.getvalue().splitlines() == run.stderr.splitlines()
    else:
        assert code == 0, err.getvalue()
        assert out.getvalue().startswith(f"{run.case.name}: OK")
        assert "not checked here" in out.getvalue()


def test_stop_is_safe_on_a_service_never_started(tmp_path: Path) -> None:
    from daemon.config import parse_config
    from daemon.service import Service

    service = Service(parse_config({"storage": {"path": str(tmp_path / "s")}}))
    service.stop()
    service.stop()
