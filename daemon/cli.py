"""``radtriage``: the command line. It parses; the work lives in functions tests call directly.

    radtriage serve --config PATH       run the daemon until SIGTERM/SIGINT
    radtriage check-config [PATH]       validate a config file and exit
    radtriage score PATH... [--json]    score files or folders offline (no network, no database)
    radtriage send FILES... --host H --port P   C-STORE files, each in its own transfer syntax
    radtriage status                    recent studies, queue and deliveries from the database
    radtriage retention [--dry-run]     delete stored pixel data past storage.retention_days, once
    radtriage purge STUDY_UID [--yes] [--force]   delete everything of one study, on request
    radtriage import-model SRC --out DST --name N --version V   a model file -> a radtriage checkpoint
    radtriage evaluate CHECKPOINT DATA --out DIR                 metrics and a report
    radtriage train DATA --out DIR                               train a DenseNet (the MURA recipe)
    radtriage phantoms OUT --studies N --seed S                  synthetic radiographs with truth
    radtriage web-password [--token]    the web.password_hash (or an API token) for config.yaml

Exit codes: 0 success, 1 runtime failure (model, port, database), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, TextIO

from daemon.config import ENV_CONFIG_PATH, Config, ConfigError, load_config
from daemon.logs import setup_logging

if TYPE_CHECKING:  # imported where it runs: torch and the DICOM stack load with it
    from daemon.service import Service

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _default_config_path() -> Path | None:
    env = os.environ.get(ENV_CONFIG_PATH)
    if env:
        return Path(env)
    local = Path("config.yaml")
    return local if local.is_file() else None


def _load(path: str | None, err: TextIO) -> Config | None:
    try:
        return load_config(Path(path) if path else _default_config_path())
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"radtriage: invalid configuration: {line}", file=err)
        return None


# -- commands -------------------------------------------------------------------------------


def _source(path: str | None) -> str:
    """The config file as the admin named it, for messages: ``crop.yaml``."""
    found = path or _default_config_path()
    return str(found) if found else "(embedded defaults)"


def cmd_check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Validate the file, then run every start-up check that needs no network and no port
    (``daemon.startup``): each failure is the line ``serve`` would stop with, and the exit
    code the one it would stop with (2 invalid file, 1 a start-up check)."""
    config = _load(args.config, err)
    if config is None:
        return EXIT_CONFIG
    from daemon.startup import offline_checks

    source = _source(args.config)
    problems, card = offline_checks(config, source)
    for problem in problems:
        print(f"radtriage: cannot start: {problem}", file=err)
    if problems:
        return EXIT_FAILURE
    assert card is not None  # the model loaded, or there would be a problem
    model = f"{card.name} {card.version}" + ("" if card.trained else " UNTRAINED") + \
        (" DEMO" if card.notice else "")
    print(f"{source}: OK (model {model}, {len(config.destinations)} destination(s), AE "
          f"{config.node.ae_title} port {config.node.port}, database "
          f"{config.database.url.split('://')[0]})", file=out)
    unchecked = [f"port {config.node.port} free"]
    if config.web.enabled:
        unchecked.append(f"web port {config.web.port} free")
    if not config.database.url.startswith("sqlite"):
        unchecked.append("the database server reachable")
    print(f"not checked here (serve checks them): {', '.join(unchecked)}", file=out)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the daemon; a start-up failure is one line on standard error and exit 1, whatever
    had started closed again."""
    config = _load(args.config, err)
    if config is None:
        return EXIT_CONFIG
    from daemon.startup import StartupError, check_log_file

    try:
        check_log_file(config)
        setup_logging(config.logging.level, phi=config.logging.phi, file=config.logging.file)
    except StartupError as exc:
        print(f"radtriage: cannot start: {exc}", file=err)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"radtriage: cannot start: logging.file: cannot open {config.logging.file}: "
              f"{exc.strerror or exc}", file=err)
        return EXIT_FAILURE
    from daemon.service import Service

    service = Service(config, source=_source(args.config))
    try:
        service.start()
    except StartupError as exc:
        return _not_started(service, str(exc), err)
    except KeyboardInterrupt:
        _not_started(service, "interrupted", err)
        return 130
    except Exception as exc:  # a bug: still one line here; the traceback is logged at DEBUG
        log.debug("start-up failed", exc_info=exc)
        from daemon.startup import one_line

        return _not_started(service, f"unexpected {type(exc).__name__}: {one_line(exc)} (a bug; "
                            "logging.level: DEBUG logs its traceback)", err)
    service.serve_forever()
    return EXIT_OK


def _not_started(service: Service, why: str, err: TextIO) -> int:
    """Say why in one line (in the log file too, when the log goes to one), close what was
    started, exit 1."""
    print(f"radtriage: cannot start: {why}", file=err)
    if service.config.logging.file is not None:
        log.error("cannot start: %s", why)
    try:
        service.stop()
    except Exception as exc:  # closing down must not bury the reason under a traceback
        log.warning("closing down after the failed start: %s: %s", type(exc).__name__, exc,
                    exc_info=log.isEnabledFor(logging.DEBUG))
    return EXIT_FAILURE


def cmd_score(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args.config, err)
    if config is None:
        return EXIT_CONFIG
    setup_logging("WARNING", phi=config.logging.phi)
    from daemon.startup import StartupError

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"radtriage: no such file or folder: {', '.join(missing)}", file=err)
        return EXIT_CONFIG
    from daemon.offline import score_paths, write_table

    try:
        rows = score_paths(args.paths, config, _source(args.config))
    except StartupError as exc:
        print(f"radtriage: cannot score: {exc}", file=err)
        return EXIT_FAILURE
    if args.json:
        json.dump(rows, out, indent=2)
        out.write("\n")
    else:
        write_table(rows, out)
    return EXIT_OK


def cmd_send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """C-STORE files (and the files under folders) to a DICOM node, each in its own transfer
    syntax; one line per file; exit 1 when any was not stored."""
    from daemon.offline import iter_files
    from daemon.send import send_files

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"radtriage: no such file or folder: {', '.join(missing)}", file=err)
        return EXIT_CONFIG
    for flag, title in (("--aet", args.aet), ("--aec", args.aec)):
        if not 0 < len(title.strip()) <= 16 or "\\" in title or not title.isprintable():
            print(f"radtriage: {flag} {title!r}: an AE title is 1 to 16 printable characters, "
                  "no backslash", file=err)
            return EXIT_CONFIG
    files = iter_files(args.paths)
    if not files:
        print("radtriage: no files to send", file=err)
        return EXIT_CONFIG
    failures = send_files(files, args.host, args.port, calling=args.aet, called=args.aec,
                          timeout_s=args.timeout, out=out)
    if failures:
        print(f"radtriage: {failures} of {len(files)} file(s) not stored", file=err)
    return EXIT_FAILURE if failures else EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args.config, err)
    if config is None:
        return EXIT_CONFIG
    from daemon.status import render_status
    from db import Database

    db = Database(config.database.url)
    try:
        db.migrate()
        out.write(render_status(db, limit=args.limit, storage=config.storage.path))
    finally:
        db.dispose()
    return EXIT_OK


def cmd_retention(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args.config, err)
    if config is None:
        return EXIT_CONFIG
    days = config.storage.retention_days
    if days <= 0:
        print("storage.retention_days is 0: stored pixel data is kept forever; nothing to do",
              file=out)
        return EXIT_OK
    setup_logging("WARNING", phi=config.logging.phi)
    from sqlalchemy.exc import SQLAlchemyError

    from daemon.retention import apply_retention
    from db import Database, utcnow

    db = Database(config.database.url)
    try:
        db.migrate()
        report = apply_retention(db, config.storage.path, utcnow(), days=days, dry_run=args.dry_run)
    except SQLAlchemyError as exc:
        print(f"radtriage: retention: database {db.describe()}: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0]}", file=err)
        return EXIT_FAILURE
    finally:
        db.dispose()
    print(("dry run: " if args.dry_run else "retention: ") + report.summary(), file=out)
    return EXIT_FAILURE if report.errors else EXIT_OK


def _confirm(question: str, out: TextIO) -> bool | None:
    """Ask on the terminal; None when there is none to ask on."""
    if not sys.stdin.isatty():
        return None
    out.write(question)
    out.flush()
    return sys.stdin.readline().strip().lower() == "yes"


def cmd_purge(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args.config, err)
    if config is None:
        return EXIT_CONFIG
    setup_logging("WARNING", phi=config.logging.phi)
    from sqlalchemy.exc import SQLAlchemyError

    from daemon.retention import NotAStudyUID, PurgeError, purge_study
    from db import Database

    if not args.yes:
        answer = _confirm(f"Delete study {args.study_uid}: its instances, results, the objects "
                          "radtriage made, deliveries and events? This cannot be undone. "
                          "Type yes: ", out)
        if answer is None:
            print("radtriage: purge deletes a study for good: give --yes to confirm (there is "
                  "no terminal to ask on)", file=err)
            return EXIT_CONFIG
        if not answer:
            print("radtriage: not purged", file=err)
            return EXIT_FAILURE
    db = Database(config.database.url)
    try:
        db.migrate()
        report = purge_study(db, config.storage.path, args.study_uid, force=args.force)
    except NotAStudyUID as exc:
        print(f"radtriage: purge: {exc}", file=err)
        return EXIT_CONFIG
    except PurgeError as exc:
        print(f"radtriage: purge: {exc}", file=err)
        return EXIT_FAILURE
    except SQLAlchemyError as exc:
        print(f"radtriage: purge: database {db.describe()}: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0]}; nothing was deleted", file=err)
        return EXIT_FAILURE
    finally:
        db.dispose()
    print(report.summary(), file=out)
    print(f"audit: a 'purged' event names the study as {report.ref}", file=out)
    for line in report.errors:
        print(f"radtriage: purge: cannot delete {line}", file=err)
    if report.errors:
        print(f"radtriage: purge: the database records are gone; run `radtriage purge "
              f"{args.study_uid}` again to delete the files left", file=err)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_web_password(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Print the scrypt hash for ``web.password_hash`` (or a new token and its ``web.token_hash``)."""
    import getpass
    import secrets as _secrets

    from web.auth import hash_secret

    if args.token:
        token = _secrets.token_urlsafe(32)
        print(f"token (give it to Prometheus or your script; it is not shown again): {token}", file=out)
        print(f"web:\n  token_hash: \"{hash_secret(token)}\"", file=out)
        return EXIT_OK
    if args.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("admin password: ")
        if getpass.getpass("again: ") != password:
            print("radtriage: web-password: the two passwords differ", file=err)
            return EXIT_CONFIG
    if len(password) < 12:
        print("radtriage: web-password: use at least 12 characters", file=err)
        return EXIT_CONFIG
    print(f"web:\n  password_hash: \"{hash_secret(password)}\"", file=out)
    return EXIT_OK


def cmd_import_model(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from inference.checkpoints import import_model_cli

    if args.preprocessing is not None:  # checked here: inference cannot ask dicom_io
        from dicom_io.pixels import Preprocessing

        try:
            Preprocessing.from_card(json.loads(args.preprocessing))
        except (ValueError, TypeError) as exc:
            print(f"radtriage: --preprocessing: {exc}", file=err)
            return EXIT_CONFIG
    if args.evaluation is not None:
        from training.evaluate import held_out_metrics

        try:
            args.held_out = held_out_metrics(json.loads(Path(args.evaluation).read_text(encoding="utf-8")),
                                             args.evaluation)
        except (OSError, ValueError) as exc:
            print(f"radtriage: --evaluation: {exc}", file=err)
            return EXIT_CONFIG
    return import_model_cli(args, out, err)


#: Commands whose arguments live with their code in ``training/``: (module, function, help). Their
#: modules import torch or OpenCV, so only the command being run has its module imported.
TRAINING_COMMANDS: dict[str, tuple[str, str, str]] = {
    "evaluate": ("training.evaluate", "evaluate_cli",
                 "study-level metrics and a report for a checkpoint on a MURA layout or DICOM with truth.csv"),
    "train": ("training.train", "train_cli",
              "train a DenseNet on a MURA layout or DICOM with truth.csv (the MURA recipe)"),
    "phantoms": ("training.phantoms", "phantoms_cli",
                 "write synthetic radiographs with their truth (MURA layout and DICOM)"),
}


def _add_training_command(sub: argparse._SubParsersAction, name: str, load: bool) -> None:
    module_name, function, help_text = TRAINING_COMMANDS[name]
    p = sub.add_parser(name, help=help_text, description=help_text)
    if load:
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(func=getattr(module, function))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``command`` (the first word of the command line) says which of the
    :data:`TRAINING_COMMANDS` gets its arguments (and its module imported)."""
    parser = argparse.ArgumentParser(prog="radtriage", description="DICOM triage daemon for radiographs")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument("--config", help=f"config file (default: ${ENV_CONFIG_PATH} or ./config.yaml)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("config", nargs="?", help="config file (default: ./config.yaml)")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("score", help="score DICOM files or folders offline")
    p.add_argument("paths", nargs="+")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per study")
    p.add_argument("--config")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("send", help="C-STORE DICOM files to a node, each in its own transfer syntax",
                       description="Send DICOM files (and the files under folders) to a DICOM node "
                       "over one association, proposing each file's own SOP class and transfer "
                       "syntax and sending its bytes unchanged; one line per file with the "
                       "status the node answered. Exit 1 when any file was not stored.")
    p.add_argument("paths", nargs="+", metavar="FILES")
    p.add_argument("--host", required=True, help="the node's host name or address")
    p.add_argument("--port", required=True, type=int, help="its DICOM port")
    p.add_argument("--aet", default="RADTRIAGE-SEND", help="our (calling) AE title "
                   "(default: RADTRIAGE-SEND)")
    p.add_argument("--aec", default="RADTRIAGE", help="the node's (called) AE title "
                   "(default: RADTRIAGE)")
    p.add_argument("--timeout", type=float, default=30, help="network timeout, seconds (default 30)")
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("status", help="recent studies, queue and deliveries")
    p.add_argument("--config")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("retention", help="delete stored pixel data past storage.retention_days, once",
                       description="Run the retention pass the daemon runs every "
                       "storage.retention_interval_s: delete the stored instances of settled studies "
                       "last received more than storage.retention_days ago; results, the objects "
                       "radtriage made and the audit trail are kept.")
    p.add_argument("--config")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.set_defaults(func=cmd_retention)
    p = sub.add_parser("purge", help="delete everything radtriage holds of one study, on request",
                       description="Delete a study's instances, results, the objects radtriage made, "
                       "deliveries and events, for good; an audit event records that a purge happened "
                       "(naming the study by a SHA-256 of its UID).")
    p.add_argument("study_uid", metavar="STUDY_UID", help="the Study Instance UID")
    p.add_argument("--config")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true",
                   help="purge a study even while it is being received, scored or delivered")
    p.set_defaults(func=cmd_purge)
    p = sub.add_parser("web-password", help="hash a dashboard password (or make an API token) for config.yaml",
                       description="Print the line to put in config.yaml: web.password_hash for a "
                       "password read from the terminal (or one line of standard input), or with "
                       "--token a new random API token and its web.token_hash.")
    p.add_argument("--token", action="store_true", help="make an API token instead of a password hash")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=cmd_web_password)
    p = sub.add_parser("import-model", help="convert a model file into a radtriage checkpoint")
    p.add_argument("src", metavar="SRC", help="the model file to import")
    p.add_argument("--out", required=True, metavar="DST", help="the checkpoint to write")
    p.add_argument("--name", required=True, help="model name, shown on every output")
    p.add_argument("--version", required=True, help="model version, shown on every output")
    p.add_argument("--arch", choices=["densenet121", "densenet169", "densenet201"], default=None,
                   help="default: detected from the weights")
    p.add_argument("--threshold", type=float, default=None,
                   help="operating point, a probability in (0, 1); default 0.5")
    p.add_argument("--training-data", default=None, metavar="TEXT", help="what it was trained on")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle Python objects (runs code from the file): trusted files only")
    p.add_argument("--untrained", action="store_true", help="mark the model untrained (plumbing tests)")
    p.add_argument("--description", default=None, metavar="TEXT")
    p.add_argument("--preprocessing", default=None, metavar="JSON",
                   help="what it was trained with, e.g. '{\"crop\": false}' (default: the seeds' recipe)")
    p.add_argument("--metrics", default=None, metavar="JSON")
    p.add_argument("--demo", action=argparse.BooleanOptionalAction, default=None,
                   help="trained on synthetic radiographs only: every output says DEMO MODEL "
                        "(default: the source card's value, else no)")
    p.add_argument("--evaluation", default=None, metavar="METRICS_JSON",
                   help="a radtriage evaluate metrics.json: its figures go on the card as metrics.held_out")
    p.add_argument("--half", action="store_true", help="store float16 weights")
    p.add_argument("--force", action="store_true", help="overwrite DST")
    p.set_defaults(func=cmd_import_model)
    for name in TRAINING_COMMANDS:
        _add_training_command(sub, name, load=name == command)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return args.func(args, out or sys.stdout, err or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
