"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) for tests: a PACS with a REST API.

Each server runs in its own folder with its own JSON config, on free loopback ports, with the
DICOMweb plugin at ``/dicom-web/``; it is stopped (terminate, then kill) when the context exits.

    from tests.orthanc import OrthancServer, orthanc_server  # noqa: F401  (the fixture)

    def test_something(orthanc_server) -> None:
        pacs = orthanc_server(modalities={"radtriage": ["RADTRIAGE", "127.0.0.1", 11112]})
        pacs.upload(path)                         # POST /instances
        assert len(pacs.rest("/instances")) == 1  # GET, parsed JSON

    with OrthancServer(tmp_path / "orthanc") as pacs:   # without pytest's fixture
        ...

Where the binary or the plugin is missing the test is skipped (failed under ``CI=true``, as the
other real peers are).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest
import requests

from tests.conftest import free_port

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (make test installs orthanc and orthanc-dicomweb)")
    pytest.skip(what)


class OrthancServer:
    """One Orthanc subprocess. ``start()``/``stop()``, or use it as a context manager.

    folder: where its config, storage, index and log go (created).
    ae_title: its DicomAet. modalities: its DicomModalities, name -> [AET, host, port].
    config: further settings merged over the defaults (e.g. ``{"StableAge": 5}``); with
        ``AuthenticationEnabled`` and ``RegisteredUsers``, the helper's REST calls use the first user.
    """

    def __init__(self, folder: Path, *, ae_title: str = "ORTHANC",
                 modalities: Mapping[str, Sequence[Any]] | None = None,
                 config: Mapping[str, Any] | None = None, start_timeout_s: float = 30) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.start_timeout_s = start_timeout_s
        self.config: dict[str, Any] = {
            "Name": f"radtriage-test-{self.http_port}",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": ae_title,
            "DicomCheckCalledAet": False,
            "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
            "StableAge": 1,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config.update(config or {})
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()
        users = self.config.get("RegisteredUsers") or {}
        if self.config.get("AuthenticationEnabled") and users:
            self.session.auth = next(iter(users.items()))  # the helper's REST calls log in

    # -- addresses -------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base URL (STOW-RS posts to ``{dicomweb_url}/studies``)."""
        return f"{self.http_url}/dicom-web"

    @property
    def config_path(self) -> Path:
        return self.folder / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # -- life ------------------------------------------------------------------------------

    def start(self) -> "OrthancServer":
        binary = shutil.which(ORTHANC)
        if binary is None:
            _missing(f"{ORTHANC} is not installed (Debian package orthanc)")
        if not DICOMWEB_PLUGIN.is_file():
            _missing(f"{DICOMWEB_PLUGIN} is missing (Debian package orthanc-dicomweb)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([binary, str(self.config_path)], cwd=self.folder,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited {self.proc.returncode} while starting; "
                                     f"its log ({self.log_path}):\n{self.log_tail()}")
            try:
                if self.session.get(f"{self.http_url}/system", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"Orthanc did not answer GET /system within "
                                     f"{self.start_timeout_s:g} s; its log ({self.log_path}):\n"
                                     f"{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 10) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.session.close()

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- REST ------------------------------------------------------------------------------

    def _checked(self, response: requests.Response) -> Any:
        if not response.ok:
            raise AssertionError(f"Orthanc {response.request.method} {response.url} answered "
                                 f"{response.status_code}: {response.text[:500]}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.content

    def rest(self, path: str) -> Any:
        """GET ``path`` (e.g. ``/instances``) and return its JSON (bytes if not JSON)."""
        return self._checked(self.session.get(f"{self.http_url}{path}", timeout=30))

    def post(self, path: str, data: bytes | str | None = None, json: Any = None) -> Any:
        """POST raw ``data`` or a ``json`` body to ``path`` and return the answer's JSON."""
        return self._checked(self.session.post(f"{self.http_url}{path}", data=data, json=json,
                                               timeout=60))

    def upload(self, path: Path) -> dict:
        """Store a DICOM file (POST /instances); returns Orthanc's answer (ID, Status, ...)."""
        return self.post("/instances", data=Path(path).read_bytes())

    def instance_uids(self) -> list[str]:
        """The SOP Instance UIDs of every instance stored."""
        return [self.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                for i in self.rest("/instances")]


@pytest.fixture
def orthanc_server(tmp_path: Path) -> Iterator[Callable[..., OrthancServer]]:
    """A factory: ``orthanc_server(**OrthancServer options)`` starts one, each in its own folder
    under tmp_path; all are stopped when the test ends."""
    started: list[OrthancServer] = []

    def start(**options: Any) -> OrthancServer:
        server = OrthancServer(tmp_path / f"orthanc{len(started) + 1}", **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
