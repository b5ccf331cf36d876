"""`radtriage serve` with the dashboard on: uvicorn on a real socket in the daemon's thread."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.web.conftest import TOKEN, site_config


def _service(tmp_path: Path, web_port: int):  # type: ignore[no-untyped-def]
    from daemon.service import Service
    from tests.fakes import FixedScorer

    config = site_config(tmp_path, f"sqlite:///{tmp_path / 'radtriage.db'}", port=web_port)
    config = config.model_copy(update={"node": config.node.model_copy(
        update={"host": "127.0.0.1", "port": free_port()}), "destinations": []})
    return Service(config, scorer=FixedScorer(0.3), destinations={})


def test_serve_starts_and_stops_the_dashboard(tmp_path):
    port = free_port()
    service = _service(tmp_path, port)
    service.start()
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "alive"}
        ready = httpx.get(f"{base}/readyz", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert set(checks) == {"database", "storage", "model", "receiver"}
        assert checks["receiver"]["detail"] == f"AE RADTRIAGE on port {service.config.node.port}"
        assert httpx.get(f"{base}/api/studies", timeout=10).status_code == 401
    finally:
        service.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_a_web_port_in_use_is_a_startup_error_naming_it(tmp_path):
    from daemon.service import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        service = _service(tmp_path, port)
        try:
            with pytest.raises(StartupError, match=rf"^web.port: cannot listen on 127.0.0.1:{port}: "):
                service.start()
        finally:
            service.stop()
