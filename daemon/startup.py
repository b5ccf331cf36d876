"""The start-up checks: what ``radtriage serve`` verifies before it takes its first association,
and what ``radtriage check-config`` runs without starting anything.

One check, one function, one message: ``serve`` stops at the first :class:`StartupError` and
prints it as ``radtriage: cannot start: <message>``; ``check-config`` runs every check here and
prints each failure as the very same line, so a config it passes is one ``serve`` starts with
(but for what needs the network or a free port: the database server, the DICOM and web ports).

Each message names the setting to fix first (``storage.path: ...``), and is one line.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from daemon.config import Config

if TYPE_CHECKING:  # torch is imported only by the checks that load the model
    from dicom_io.pixels import Preprocessing
    from inference.model import ModelCard


class StartupError(Exception):
    """The daemon cannot start; the message (one line) says what to fix."""


def one_line(text: object) -> str:
    """``text`` on one line: a library's message may span several (SQLAlchemy adds a
    "Background on this error" link on a line of its own, which is left out)."""
    lines = [line.strip() for line in str(text).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("(Background on this error"))


# -- files and folders ------------------------------------------------------------------------


def writable_folder(folder: Path, key: str) -> None:
    """StartupError naming ``key`` unless a file can be created in ``folder`` or, while it does
    not exist yet, in the nearest folder above it (where it would be created). A real file is
    created and deleted: permission bits say nothing about a read-only mount or an ACL."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StartupError(f"{key}: cannot create {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".radtriage-check-"):
            pass
    except OSError as exc:
        raise StartupError(f"{key}: cannot write in {existing}: {exc.strerror or exc}") from exc


def _writable_file(path: Path, key: str) -> None:
    if path.is_dir():
        raise StartupError(f"{key}: {path} is a folder, not a file")
    writable_folder(path.parent, key)


def check_storage(config: Config) -> None:
    """``storage.path`` is a folder radtriage can write in (or can create)."""
    writable_folder(config.storage.path, "storage.path")


def sqlite_file(config: Config) -> Path | None:
    """The SQLite database file of ``database.url``; None for PostgreSQL or an in-memory one."""
    from sqlalchemy.engine import make_url

    url = make_url(config.database.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def describe_url(url: str) -> str:
    """A database URL for messages, its password hidden (also when it cannot be parsed)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def check_database(config: Config) -> None:
    """``database.url`` names a database radtriage has a driver for (no connection is made: a
    PostgreSQL server is reached only by ``serve``), and an SQLite file in a folder radtriage
    can write in (SQLite writes its WAL and journal beside the file)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    url = config.database.url
    try:
        create_engine(url).dispose()
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StartupError(f"database.url: cannot use {describe_url(url)}: {one_line(exc)}") from exc
    path = sqlite_file(config)
    if path is not None:
        _writable_file(path, "database.url")


def check_log_file(config: Config) -> None:
    """``logging.file``, if set, can be written."""
    if config.logging.file is not None:
        _writable_file(config.logging.file, "logging.file")


# -- TLS and destinations -----------------------------------------------------------------------


def check_node_tls(config: Config) -> None:
    """The certificate, key and CA files of ``node.tls`` load."""
    from daemon.access import AccessError, server_ssl_context

    if config.node.tls is not None:
        try:
            server_ssl_context(config.node.tls)
        except AccessError as exc:
            raise StartupError(one_line(exc)) from exc


def check_destinations(config: Config) -> None:
    """Every destination can be built (its certificate files load); nothing is sent. ``serve``
    builds them (the same function) right after :data:`FILE_CHECKS`."""
    from daemon.service import build_destinations

    build_destinations(config)


# -- the model ----------------------------------------------------------------------------------


def load_model(config: Config):  # type: ignore[no-untyped-def]  # (torch module, ModelCard)
    """The configured checkpoint, loaded and verified (its card, the sha256 of its weights) on
    the CPU; StartupError naming ``model.checkpoint``."""
    from inference.errors import CheckpointError
    from inference.model import load_checkpoint

    m = config.model
    try:
        return load_checkpoint(m.checkpoint, allow_untrained=m.allow_untrained)
    except CheckpointError as exc:
        raise StartupError(f"model.checkpoint: {one_line(exc)}") from exc


def model_device(config: Config):  # type: ignore[no-untyped-def]  # a torch.device
    """The device ``model.device`` names, if this machine has it."""
    from inference.errors import CheckpointError
    from inference.model import select_device

    try:
        return select_device(config.model.device)
    except CheckpointError as exc:  # "model.device is cuda but no CUDA device is available"
        raise StartupError(one_line(exc)) from exc


def model_preprocessing(config: Config, card: "ModelCard", source: str | None = None) -> "Preprocessing":
    """The model's preprocessing, which must be exactly what ``preprocessing:`` in the config
    says; ``source`` names the config file in the message (``crop.yaml``).

    Raises StartupError listing every setting where the two differ: a model served with other
    preprocessing than it was trained with gives scores that mean nothing.
    """
    from dicom_io.pixels import Preprocessing

    try:
        trained = Preprocessing.from_card(card.preprocessing)
    except (TypeError, ValueError) as exc:
        raise StartupError(f"model.checkpoint: the card of {card.name} {card.version} has "
                           f"unusable preprocessing: {one_line(exc)}") from exc
    wanted = Preprocessing(**config.preprocessing.model_dump(), mean=trained.mean, std=trained.std)
    diffs = wanted.differences(trained)
    if diffs:
        raise StartupError(
            f"preprocessing: {source or 'the configuration'} and the model {card.name} "
            f"{card.version} disagree (config vs model): {'; '.join(diffs)}. Set preprocessing: "
            "to what the model was trained with")
    return trained


# -- all of them --------------------------------------------------------------------------------


#: The checks that need neither the model nor the network, in the order ``serve`` runs them
#: (before it loads the model: a typo in a path costs no model load).
FILE_CHECKS: tuple[Callable[[Config], None], ...] = (
    check_log_file, check_storage, check_database, check_node_tls)


def offline_checks(config: Config, source: str | None = None) -> tuple[list[str], "ModelCard | None"]:
    """Every start-up check that needs no network and no port, as ``check-config`` runs them:
    (one message per failure, the model's card when it loaded)."""
    problems: list[str] = []
    for check in (*FILE_CHECKS, check_destinations):
        try:
            check(config)
        except StartupError as exc:
            problems.append(str(exc))
    card = None
    try:
        _model, card = load_model(config)
        model_preprocessing(config, card, source)
    except StartupError as exc:
        problems.append(str(exc))
    try:
        model_device(config)
    except StartupError as exc:
        problems.append(str(exc))
    return problems, card
