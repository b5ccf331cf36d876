"""Request bodies read as they arrive, within limits, and only once the sender is known.

Starlette parses a form (``request.form()``; FastAPI's ``Form`` and ``File`` parameters) before
any dependency runs, the login check included, and spools every file part over 1 MB to the
system temporary folder: an unauthenticated 1.5 GB POST landed on disk before its 401. So
radtriage's routes take no form parameters; they read their bodies here:

* :func:`read_small_form` for the login, logout and retry forms: at most ``limit`` bytes (a
  few KB), URL-encoded or multipart, fields only;
* :func:`read_multipart` for uploads, called by the route once the session or token (and a
  session's CSRF token, from a header, or the form's first field, checked before any file part
  is read) has been checked. The parts are parsed as
  the body streams (python-multipart's streaming parser); every byte is counted as it arrives,
  and the read stops with a 413 as soon as ``limit`` is passed, with chunked transfer encoding
  as with a Content-Length. Files are held in memory (at most ``limit`` bytes in all), never
  on disk.

:class:`CloseUnreadBody` makes uvicorn close a connection whose request body the app answered
without reading (a 401, 403 or 413 before the body): otherwise uvicorn keeps the connection
open and reads the rest of the body, however long, only to drop it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

#: what a small form (login, logout, retry) may be: its fields are a few dozen bytes
SMALL_FORM_BYTES = 16 * 1024
#: multipart framing allowed beyond the upload limit: boundaries and part headers
FRAMING_BYTES = 64 * 1024
#: the largest field (not file) value: csrf_token, keep, password
MAX_FIELD_BYTES = 4 * 1024
#: parts in one upload
MAX_FILES, MAX_FIELDS = 1000, 20


class FormError(Exception):
    """A body that is refused; ``status`` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadedPart:
    """One file part of a multipart body."""

    filename: str
    data: bytes


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedPart] = field(default_factory=list)


async def _counted(request: Request, limit: int, too_large: str) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; FormError(413) once more than ``limit`` came."""
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise FormError(413, too_large)
            if chunk:
                yield chunk
    except ClientDisconnect as exc:
        raise FormError(400, "the client closed the connection before the body ended") from exc


class _Multipart:
    """python-multipart's callbacks, collecting fields and files within the limits."""

    def __init__(self, charset: str, *, max_file_bytes: int, too_large: str, max_files: int,
                 max_fields: int, first_field: FirstField | None = None) -> None:
        self.charset = charset
        self.first_field = first_field
        self.max_file_bytes, self.too_large = max_file_bytes, too_large
        self.max_files, self.max_fields = max_files, max_fields
        self.form = ParsedForm()
        self.file_bytes = 0
        self.field_parts = 0
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name: str | None = None
        self._filename: str | None = None
        self._data = bytearray()

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.part_begin, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_end": self.end}

    def part_begin(self) -> None:
        self._disposition, self._name, self._filename = b"", None, None
        self._data = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise FormError(400, 'a part of the form has no name (Content-Disposition "name")')
        self._name = self._text(options[b"name"])
        if self.first_field is not None and (self._name != self.first_field[0]
                                             or b"filename" in options):
            raise FormError(403, f"the form's first field must be {self.first_field[0]!r}: it "
                                 "is checked before any file is read")
        if b"filename" in options:
            self._filename = self._text(options[b"filename"])
            if self.max_files == 0:
                raise FormError(400, "this form takes no files")
            if len(self.form.files) >= self.max_files:
                raise FormError(413, f"too many files: at most {self.max_files} in one upload")
        else:
            self.field_parts += 1
            if self.field_parts > self.max_fields:
                raise FormError(413, f"too many form fields: at most {self.max_fields}")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._filename is None:
            if len(self._data) + n > MAX_FIELD_BYTES:
                raise FormError(413, f"the form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")
        else:
            self.file_bytes += n
            if self.file_bytes > self.max_file_bytes:
                raise FormError(413, self.too_large)
        self._data += data[start:end]

    def part_end(self) -> None:
        if self._filename is None:
            value = self._text(bytes(self._data))
            self.form.fields[self._name or ""] = value
            if self.first_field is not None:  # checked before the next part is read
                check, self.first_field = self.first_field[1], None
                check(value)
        else:
            self.form.files.append(UploadedPart(self._filename, bytes(self._data)))
        self._data = bytearray()

    def end(self) -> None:
        self.ended = True

    def _text(self, raw: bytes) -> str:
        return raw.decode(self.charset, errors="replace")


#: a field that must come first, and what checks its value (raising to refuse the body)
FirstField = tuple[str, Callable[[str], None]]


async def read_multipart(request: Request, *, limit: int, too_large: str,
                         framing: int = FRAMING_BYTES, max_files: int = MAX_FILES,
                         max_fields: int = MAX_FIELDS,
                         first_field: FirstField | None = None) -> ParsedForm:
    """Parse a multipart/form-data body as it streams: file data at most ``limit`` bytes in all
    and the body at most ``limit + framing`` (boundaries, part headers, fields);
    FormError(413, ``too_large``) as soon as either is passed. Fields are at most
    :data:`MAX_FIELD_BYTES` each.

    ``first_field`` (name, check): the body's first part must be that field, and ``check`` runs
    on its value as soon as it is read, before any other part (a browser form's CSRF token,
    its first input): FormError(403) when another part comes first."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if not content_type:
        raise FormError(400, "no file was uploaded (an empty body)")
    if content_type != b"multipart/form-data":
        raise FormError(415, "send the files as multipart/form-data (a form with file fields)")
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError(400, "the multipart body has no boundary in its Content-Type")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    collect = _Multipart(charset if charset.lower() in ("utf-8", "latin-1", "iso-8859-1") else "utf-8",
                         max_file_bytes=limit, too_large=too_large, max_files=max_files,
                         max_fields=max_fields, first_field=first_field)
    try:
        parser = MultipartParser(boundary, collect.callbacks())  # type: ignore[arg-type]
        async for chunk in _counted(request, limit + framing, too_large):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError(400, f"the multipart body is malformed: {exc}") from exc
    except ValueError as exc:  # python-multipart refuses a boundary it cannot use
        raise FormError(400, f"the multipart body cannot be parsed: {exc}") from exc
    if not collect.ended:
        raise FormError(400, "the multipart body ended before its closing boundary")
    return collect.form


async def read_small_form(request: Request, limit: int = SMALL_FORM_BYTES) -> dict[str, str]:
    """The fields of a small URL-encoded or multipart form (no files), read up to ``limit``
    bytes; FormError(413) beyond, (415) for another content type."""
    too_large = f"the form is larger than {limit} bytes"
    content_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if content_type == b"multipart/form-data":
        form = await read_multipart(request, limit=0, framing=limit, too_large=too_large, max_files=0)
        return form.fields
    if content_type not in (b"application/x-www-form-urlencoded", b""):
        raise FormError(415, "send the form as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in _counted(request, limit, too_large):
        body += chunk
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(400, f"the form cannot be parsed: {exc}") from exc


class CloseUnreadBody:
    """ASGI middleware: a response sent before the request's body was read to its end says
    ``Connection: close``, so uvicorn closes the connection instead of reading the rest."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or not _has_body(scope["headers"]):
            await self.app(scope, receive, send)
            return
        read_all = False

        async def tracked_receive() -> dict[str, Any]:
            nonlocal read_all
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                read_all = True
            return message

        async def closing_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and not read_all:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, tracked_receive, closing_send)


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False
