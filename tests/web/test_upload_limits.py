"""Uploads are checked before they are read (issue 17, finding 4).

* Authentication (and a cookie session's CSRF token) is checked before any byte of the body is
  read: an unauthenticated 512 MB chunked POST gets its 401 at once, nothing of it reaches the
  app and nothing is written to the temporary folder.
* ``web.upload_max_mb`` is counted while the body streams: 413 as soon as it is passed, even
  with chunked transfer encoding and no Content-Length.
* Images are checked against ``limits.max_pixels`` before they are decoded: a PNG of 20000 x
  20000 in 389 KB, a JPEG whose frame header says 20000 x 20000 and a deflated DICOM of 16000 x
  16000 zeros (250 KB on the wire) are refused, with the limit named, at a cost of a few MB of
  memory (decoding them raised the peak by 0.5 to 0.8 GB).

The streaming tests run radtriage's own uvicorn server on a real socket; the client sends the
body in chunks while it reads the response, as a browser or an attacker does.
"""

from __future__ import annotations

import struct
import tempfile
import tracemalloc
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.web.conftest import (
    TOKEN,
    BodyCounter,
    log_in,
    make_client,
    serve,
    site_app,
    streamed_post,
    with_web,
)

BEARER = {"Authorization": f"Bearer {TOKEN}"}
FILE_PART = (b'Content-Disposition: form-data; name="files"; filename="big.dcm"\r\n'
             b"Content-Type: application/octet-stream")
MB = 1024 * 1024


@pytest.fixture
def system_temp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """The system temporary folder moved to an empty folder of the test's own, and every use of
    it recorded (a TemporaryFile on Linux has no name, so an empty folder alone proves little:
    every tempfile function that is not given a folder asks ``gettempdir``)."""
    folder = tmp_path / "system-temp"
    folder.mkdir()
    calls: list[str] = []
    real = tempfile.gettempdir

    def spy() -> str:
        calls.append("gettempdir")
        return real()

    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(tempfile, "gettempdir", spy)
    yield folder, calls


# -- authentication first -------------------------------------------------------------------


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(sqlite_site, system_temp):
    folder, calls = system_temp
    app = BodyCounter(site_app(sqlite_site))
    with serve(app) as url:
        r = streamed_post(url, "/api/upload", headers={}, total=512 * MB, part_headers=FILE_PART,
                          keep_sending=True)
    assert r.status == 401, r.head
    assert app.received == 0  # not one byte of the body went to the app
    # the answer came while the client was sending, and the server then closed the connection
    # instead of reading (and dropping) the rest; what the client got out before that sat in
    # the two sockets' kernel buffers and uvicorn's 64 KB read buffer
    assert not r.finished and r.sent_when_answered is not None
    assert r.sent_when_answered < 32 * MB and r.sent < 64 * MB, (r.sent_when_answered, r.sent)
    assert b"connection: close" in r.head.lower()
    assert list(folder.iterdir()) == [] and calls == []


@pytest.mark.parametrize("path", ["/api/upload", "/upload"])
def test_a_cookie_session_upload_needs_its_csrf_token_before_the_body(sqlite_site, system_temp, path):
    client = make_client(sqlite_site)
    log_in(client)
    cookie = f"radtriage_session={client.cookies['radtriage_session']}"
    folder, calls = system_temp
    app = BodyCounter(site_app(sqlite_site))
    with serve(app) as url:
        r = streamed_post(url, path, headers={"Cookie": cookie}, total=64 * MB,
                          part_headers=FILE_PART)
    # refused at the first part's headers: a file where the token must come first
    assert r.status == 403 and b"csrf_token" in r.body, r.head
    assert app.received <= 128 * 1024 and r.sent_when_answered < 32 * MB
    assert list(folder.iterdir()) == [] and calls == []


def test_an_unauthenticated_login_form_cannot_fill_the_disk(sqlite_site, system_temp):
    """The login form is read without a session (it makes one), so its body is bounded instead:
    a few KB of fields, no files."""
    folder, calls = system_temp
    app = BodyCounter(site_app(sqlite_site))
    with serve(app) as url:
        r = streamed_post(url, "/login", headers={}, total=256 * MB, part_headers=FILE_PART,
                          keep_sending=True)
    assert r.status in (400, 413), r.head  # a file part is refused at its headers
    assert app.received <= 128 * 1024 and not r.finished and r.sent < 64 * MB
    assert list(folder.iterdir()) == [] and calls == []


# -- the size limit, counted as the body arrives --------------------------------------------


def test_an_over_limit_chunked_upload_gets_413_early(sqlite_site, system_temp):
    folder, calls = system_temp
    app = BodyCounter(site_app(with_web(sqlite_site, upload_max_mb=1)))
    with serve(app) as url:
        r = streamed_post(url, "/api/upload", headers=BEARER, total=512 * MB,
                          part_headers=FILE_PART, keep_sending=True)
    assert r.status == 413 and b"web.upload_max_mb (1 MB)" in r.body, r.head + r.body
    assert app.received <= 2 * MB  # the limit and the chunk that passed it (64-256 KB)
    assert not r.finished and r.sent_when_answered < 32 * MB and r.sent < 64 * MB
    assert b"connection: close" in r.head.lower()
    assert list(folder.iterdir()) == [] and calls == []


def test_an_upload_within_the_limit_is_scored_through_the_stream(sqlite_site):
    import cv2
    import numpy as np

    img = np.zeros((120, 90), np.uint8)
    img[20:100, 30:60] = 200
    png = cv2.imencode(".png", img)[1].tobytes()
    with serve(site_app(with_web(sqlite_site, upload_max_mb=1))) as url:
        import httpx

        r = httpx.post(f"{url}/api/upload", headers=BEARER, timeout=60,
                       files=[("files", ("a.png", png, "image/png")), ("files", ("b.png", png, "image/png"))])
    assert r.status_code == 200, r.text
    study = r.json()["studies"][0]
    assert [v["name"] for v in study["views"]] == ["a.png", "b.png"]
    assert study["probability"] == pytest.approx(0.9)


def test_malformed_multipart_is_a_400(sqlite_site):
    client = make_client(sqlite_site)
    r = client.post("/api/upload", headers={**BEARER, "Content-Type": "multipart/form-data; boundary=x"},
                    content=b"--x\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--x--\r\n")
    assert r.status_code == 400 and "name" in r.json()["detail"]
    r = client.post("/api/upload", headers={**BEARER, "Content-Type": "multipart/form-data"},
                    content=b"--x--\r\n")
    assert r.status_code == 400 and "boundary" in r.json()["detail"]
    r = client.post("/api/upload", headers={**BEARER, "Content-Type": "application/json"}, content=b"{}")
    assert r.status_code == 415


def test_too_many_parts_are_refused(sqlite_site):
    client = make_client(sqlite_site)
    files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(1001)]
    r = client.post("/api/upload", headers=BEARER, files=files)
    assert r.status_code == 413 and "files" in r.json()["detail"]


# -- images checked before they are decoded ---------------------------------------------------


def png_bomb(side: int = 20000) -> bytes:
    """A grey 8-bit PNG of side x side zeros: 389 KB for 20000 x 20000 (400 MB decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(6)
    block = bytes((side + 1) * 500)  # 500 rows, each a filter byte and its pixels
    idat = b"".join(z.compress(block) for _ in range(side // 500)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def jpeg_bomb(side: int = 20000) -> bytes:
    """A small JPEG whose frame header (SOF0) claims side x side: a decoder allocates that."""
    import cv2
    import numpy as np

    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def deflated_dicom_bomb(folder: Path, side: int = 16000) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of side x side 8-bit zeros (256 MB inflated),
    built as a stream: a few hundred KB."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.conftest import write_study

    ds = pydicom.dcmread(write_study(folder, views=1, rows=32, columns=32)[0])
    del ds.PixelData
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [z.compress(head.getvalue() + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", side * side))]
    block = bytes(side * 1000)
    body += [z.compress(block) for _ in range(side // 1000)]
    body.append(z.flush())
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(body)


@contextmanager
def memory_peak() -> Iterator[dict[str, int]]:
    """The peak of Python and NumPy allocations (tracemalloc) while the block runs."""
    out: dict[str, int] = {}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["traced"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, bytes, str]]:
    return {"png": ("bomb.png", png_bomb(), "image/png"),
            "jpeg": ("bomb.jpg", jpeg_bomb(), "image/jpeg"),
            "dicom": ("bomb.dcm", deflated_dicom_bomb(tmp_path_factory.mktemp("bomb")), "application/dicom")}


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_an_image_bomb_is_refused_before_it_is_decoded(sqlite_site, bombs, kind):
    name, data, mime = bombs[kind]
    assert len(data) < 1 * MB
    client = make_client(sqlite_site)
    with memory_peak() as peak:
        r = client.post("/api/upload", headers=BEARER, files=[("files", (name, data, mime))])
    assert r.status_code == 200, r.text
    out = r.json()
    side = "16000 x 16000" if kind == "dicom" else "20000 x 20000"
    errors = [f["error"] for f in out["refused"]] + [v["error"] for s in out["studies"] for v in s["views"]]
    assert len(errors) == 1 and side in errors[0] and "limits.max_pixels (50000000)" in errors[0], errors
    # the body is held once in memory (under a MB) and copied a few times by the test client
    # and the parser; decoding would have cost 256 to 400 MB
    assert peak["traced"] < 24 * MB, peak


def test_an_image_within_max_pixels_is_still_decoded(sqlite_site, bombs):
    small = sqlite_site.config.model_copy(update={"limits": sqlite_site.config.limits.model_copy(
        update={"max_pixels": 100})})
    client = make_client(sqlite_site.__class__(**{**sqlite_site.__dict__, "config": small}))
    import cv2
    import numpy as np

    png = cv2.imencode(".png", np.zeros((10, 9), np.uint8))[1].tobytes()
    r = client.post("/api/upload", headers=BEARER, files=[("files", ("ok.png", png, "image/png"))])
    assert r.json()["studies"][0]["views"][0]["error"] is None
    tall = cv2.imencode(".png", np.zeros((12, 10), np.uint8))[1].tobytes()
    r = client.post("/api/upload", headers=BEARER, files=[("files", ("no.png", tall, "image/png"))])
    assert r.json()["studies"][0]["views"][0]["error"] == (
        "12 x 10 pixels exceeds limits.max_pixels (100)")


def test_image_size_reads_only_the_header():
    from web.upload import UploadError, image_size

    assert image_size(png_bomb(1000)) == (1000, 1000)
    assert image_size(jpeg_bomb(777)) == (777, 777)
    for broken in (b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + bytes(30), b"\xff\xd8\xff\xe0",
                   b"not an image"):
        with pytest.raises(UploadError):
            image_size(broken)


def test_the_upload_form_sends_its_token_first_and_it_is_checked_before_any_file(sqlite_site):
    """The browser's upload form carries the session's CSRF token as its first field (never in
    its address, where access logs and the history would keep it); the token is checked as
    soon as that field is read, before any file part. A script may send it in a header."""
    import cv2
    import numpy as np

    client = make_client(sqlite_site)
    csrf = log_in(client)
    page = client.get("/upload").text
    assert 'action="/upload"' in page and "csrf_token=" not in page
    assert page.index('name="csrf_token"') < page.index('type="file"')  # first in the form
    png = cv2.imencode(".png", np.zeros((30, 20), np.uint8))[1].tobytes()
    files = [("files", ("arm.png", png, "image/png"))]
    assert client.post("/upload", files=files).status_code == 403  # no token
    assert client.post("/upload", files=files, data={"csrf_token": "forged"}).status_code == 403
    assert client.post(f"/upload?csrf_token={csrf}", files=files).status_code == 403  # not read
    r = client.post("/upload", files=files, data={"csrf_token": csrf})
    assert r.status_code == 200 and "data:image/png;base64," in r.text
    r = client.post("/api/upload", files=files, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["studies"][0]["probability"] == pytest.approx(0.9)


def test_a_file_before_the_token_is_refused_before_it_is_read(sqlite_site):
    """A body whose first part is a file (or another field) is refused at that part's headers:
    nothing of a file is read for a session that has not shown its token."""
    from tests.web.conftest import multipart_body

    client = make_client(sqlite_site)
    csrf = log_in(client)
    body, content_type = multipart_body([("files", "a.png", b"x" * 1000), ("csrf_token", None, csrf.encode())])
    r = client.post("/upload", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 403 and "first field" in r.text


def test_a_login_form_is_bounded_too(sqlite_site):
    client = make_client(sqlite_site)
    r = client.post("/login", data={"password": "x" * 20000, "csrf_token": "t"})
    assert r.status_code == 413
    r = client.post("/login", files=[("password", (None, "x" * 5000))], data={"csrf_token": "t"})
    assert r.status_code == 413 and "longer than" in r.text
    fields = [("f", (None, "1"))] * 30
    assert client.post("/login", files=fields).status_code == 413
