"""Receive throughput: radtriage against DCMTK ``storescp``, same files, same ``storescu``.

    .venv/bin/python benchmarks/receive.py [--instances 200] [--size 2048] [--repeat 3]
                                           [--pdu 131072] [--database postgresql://...]
                                           [--json PATH] [--check BASELINE]

The same N generated CR instances (``--size`` square, 16 bits allocated) are sent with ONE
``storescu`` invocation per run, the same command line and environment for every receiver:

* ``storescp``: DCMTK's storescp with its default options (what an admin gets) apart from the
  port, the output folder and ``--max-pdu``. DCMTK >= 3.6.2 leaves Nagle's algorithm on unless
  the environment says ``TCP_NODELAY=1``, and storescp writes each C-STORE response in several
  small pieces, so on Linux every response waits for the sender's delayed ACK (~40 ms);
* ``storescp-nodelay``: the same with ``TCP_NODELAY=1`` in its environment: the fast baseline,
  what DCMTK does with Nagle off (as Orthanc builds it, and as dcm4che behaves by default);
* ``radtriage``: ``radtriage serve`` with a temporary config: the same max receive PDU
  (``node.max_pdu_size``), storage and an SQLite database (or a fresh PostgreSQL database with
  ``--database``) in a temporary folder, an untrained plumbing checkpoint on the CPU, no
  destinations, and ``completion.release_grace_s``/``stable_s`` at 3600 s so that no study is
  scored while the benchmark is receiving. Each Success is answered only after the file is
  written, fsynced, renamed, its folder fsynced and the instance row committed.

storescp never fsyncs: when storescu returns, its files may still be in the page cache. So
each storescp row also gets "+ sync afterwards": storescu's time plus a ``sync`` run right after
it, the time until the same bytes are on disk. A disk ceiling is measured too: radtriage's own
``durable_write`` (temp file, fsync, rename, folder fsync) of every file from memory, one after
the other, no network and no database: no receiver that answers only once an instance is
durable can beat it on that volume.

The sender runs with ``TCP_NODELAY=1`` (Nagle off, like a real PACS toolkit) unless
``--sender-nagle``. The wall-clock time of the ``storescu`` process is measured; MB/s = total
bytes of the files sent / seconds (MB = 10^6 bytes). Runs rotate the order of the receivers;
each radtriage run starts from an empty storage folder and database. Between runs the received
files are deleted and ``sync`` is called, so write-back from one run does not compete with the
next. After each radtriage run the instance rows and the files on disk are counted (both must
equal the number sent), then radtriage is stopped with SIGTERM and must exit 0.

Target (from the issue): radtriage, durable and with its database rows, at least 0.8x storescp.
The ratio and verdict are printed against every baseline; ``--check BASELINE`` makes the exit
status follow one of them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_RATIO = 0.8
GENERATOR_VERSION = 1  # bump when the generated files change
CACHE_ROOT = Path(tempfile.gettempdir()) / "radtriage-bench-cache"
STORESCP_MAX_PDU = 131072  # DCMTK accepts --max-pdu 4096..131072
RADTRIAGE_AET = "RADTRIAGE"
STORESCP_AET = "STORESCP"
CALLING_AET = "BENCHSCU"
SKIP_DIRS = {".tmp", "quarantine", "outputs"}
PEERS = ("storescp", "storescp-nodelay", "radtriage")
BASELINES = ("storescp", "storescp-nodelay")


# -- helpers ----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> None:
    if shutil.which(name) is None:
        sys.exit(f"receive.py: {name} not found; install DCMTK (`make test-tools`)")


def radtriage_exe() -> str:
    local = Path(sys.executable).parent / "radtriage"
    if local.exists():
        return str(local)
    found = shutil.which("radtriage")
    if found is None:
        sys.exit("receive.py: the radtriage console script is not installed (`make install`)")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without RADTRIAGE_* overrides and DCMTK's TCP_NODELAY, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADTRIAGE_") and k != "TCP_NODELAY"}
    env.update(extra)
    return env


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, all threads (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def dcmtk_version() -> str:
    try:
        out = subprocess.run(["storescu", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    first = out.strip().splitlines()[0] if out.strip() else "?"
    return first.strip("$ ").replace("dcmtk: ", "")


def machine_info(workdir: Path) -> dict:
    uname = os.uname()
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    fstype = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        fstype = subprocess.run(["findmnt", "-no", "FSTYPE", "--target", str(workdir)],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    du = shutil.disk_usage(workdir)
    import pydicom
    import pynetdicom

    return {
        "uname": f"{uname.sysname} {uname.release} {uname.machine}",
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "workdir": str(workdir),
        "filesystem": fstype,
        "disk_free_gib": round(du.free / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk_version(),
    }


def prune(keep: Path, pattern: str) -> None:
    """Remove cached entries like ``keep`` made by older code (their hash differs)."""
    for old in keep.parent.glob(pattern):
        if old == keep or old.name.endswith(".tmp"):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def source_hash(*paths: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# -- the files --------------------------------------------------------------------------------


def generate(instances: int, size: int, bits: int, views: int) -> tuple[list[Path], int]:
    """Return the benchmark files (cached in /tmp by a hash of what makes them) and their bytes.

    Metadata comes from dicom_io.synthetic.make_instance; the pixel arrays are rendered once per
    view number with synthetic._pixels and reused across studies (rendering 200 arrays of 2k x 2k
    takes a minute; the network path never looks at pixel values). Every file has its own
    SOP Instance UID, every study its own Study and Series Instance UIDs.
    """
    from dicom_io import synthetic

    key = source_hash(Path(synthetic.__file__),
                      extra=f"{GENERATOR_VERSION}:{instances}:{size}:{bits}:{views}")
    folder = CACHE_ROOT / f"cr-{instances}x{size}-{bits}bit-{key}"
    prune(folder, f"cr-{instances}x{size}-{bits}bit-*")
    if (folder / "COMPLETE").is_file():
        files = sorted(folder.glob("*.dcm"))
        if len(files) == instances:
            log(f"using cached files in {folder}")
            return files, sum(f.stat().st_size for f in files)
    log(f"generating {instances} CR instances {size}x{size} ({bits} bits stored) in {folder}")
    t0 = time.perf_counter()
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pool = [synthetic._pixels(synthetic.StudySpec(rows=size, columns=size, bits_stored=bits, seed=7), v)
            .tobytes() for v in range(views)]
    n = 0
    for s in range((instances + views - 1) // views):
        spec = synthetic.StudySpec(
            views=views, rows=8, columns=8, bits_stored=bits, modality="CR",
            body_part=("WRIST", "HAND", "ELBOW", "SHOULDER")[s % 4],
            patient_id=f"BENCH-{s:04d}", accession_number=f"BENCH{s:05d}", seed=s,
        )
        for v in range(min(views, instances - n)):
            ds = synthetic.make_instance(spec, v)  # the metadata of a real instance, 8x8 pixels
            ds.Rows = ds.Columns = size
            ds.PixelData = pool[v]
            ds.save_as(staging / f"s{s:03d}-v{v}.dcm", enforce_file_format=True)
            n += 1
    (staging / "COMPLETE").write_text(f"{instances} files\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    log(f"generated in {time.perf_counter() - t0:.1f} s")
    files = sorted(folder.glob("*.dcm"))
    return files, sum(f.stat().st_size for f in files)


def plumbing_checkpoint() -> Path:
    """An untrained DenseNet-169 checkpoint exactly as tests/conftest.py makes one (cached)."""
    import inference.model as im

    path = CACHE_ROOT / f"untrained-densenet169-{source_hash(Path(im.__file__))}.pt"
    prune(path, "untrained-densenet169-*.pt")
    if path.is_file():
        return path
    log("writing an untrained plumbing checkpoint (radtriage refuses to start without a model)")
    import torch

    torch.manual_seed(1234)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    im.save_checkpoint(tmp, im.build_model("densenet169"),
                       im.ModelCard(name="plumbing-test", version="0.0.1", trained=False,
                                    description="random weights, for plumbing tests only"))
    os.replace(tmp, path)
    return path


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Run:
    peer: str
    pdu: int  # the max receive PDU this receiver was given
    seconds: float
    mb_per_s: float
    receiver_cpu_s: float | None
    sender_cpu_s: float
    files_on_disk: int
    rows: int | None = None
    studies: int | None = None
    exit_code: int | None = None
    order: int = 0
    requested_pdu: int = 0  # the --pdu value of this run (storescp is capped at 131072)
    sync_s: float | None = None  # storescp: `sync` right after storescu returned


def storescu_cmd(aec: str, port: int, files: list[Path]) -> list[str]:
    return ["storescu", "-aet", CALLING_AET, "-aec", aec, "127.0.0.1", str(port), *map(str, files)]


def wait_for_echo(aec: str, port: int, proc: subprocess.Popen, logfile: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-3000:] if logfile.exists() else ""
            raise SystemExit(f"receive.py: the {aec} receiver exited with {proc.returncode} at start\n{tail}")
        r = subprocess.run(["echoscu", "-to", "2", "-aet", CALLING_AET, "-aec", aec, "127.0.0.1", str(port)],
                           capture_output=True, timeout=30)
        if r.returncode == 0:
            return
        time.sleep(0.25)
    raise SystemExit(f"receive.py: no C-ECHO answer from {aec} on port {port} after {timeout:.0f} s")


def send(aec: str, port: int, files: list[Path], receiver_pid: int, env: dict[str, str]
         ) -> tuple[float, float | None, float]:
    """Run the one storescu; return its wall-clock seconds, the receiver's and its own CPU seconds."""
    cmd = storescu_cmd(aec, port, files)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = cpu_seconds(receiver_pid)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    cpu1 = cpu_seconds(receiver_pid)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"receive.py: storescu to {aec} failed ({r.returncode}):\n"
                         f"{(r.stdout + r.stderr)[-3000:]}")
    sender_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, (cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None), sender_cpu


def count_files(folder: Path, suffix: str = ".dcm") -> int:
    """Files (ending in ``suffix``) under ``folder``, outside .tmp, quarantine and outputs."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == folder:
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        n += sum(f.endswith(suffix) for f in filenames)
    return n


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return int(proc.returncode)


def settle(folder: Path) -> None:
    """Delete a run's output and flush dirty pages so the next run starts with a quiet disk."""
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()


def run_storescp(files: list[Path], total: int, pdu: int, work: Path, *, nodelay: bool,
                 sender_env: dict[str, str]) -> Run:
    peer = "storescp-nodelay" if nodelay else "storescp"
    out = work / "out"
    out.mkdir(parents=True)
    port = free_port()
    logfile = work / "storescp.log"
    env = clean_env(TCP_NODELAY="1") if nodelay else clean_env()
    with logfile.open("wb") as lf:
        proc = subprocess.Popen(["storescp", "--max-pdu", str(pdu), "-od", str(out), str(port)],
                                stdout=lf, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_echo(STORESCP_AET, port, proc, logfile, 30)
        seconds, cpu, sender_cpu = send(STORESCP_AET, port, files, proc.pid, sender_env)
        t0 = time.perf_counter()
        os.sync()  # how long until storescp's files are on disk too (the previous run was synced)
        sync_s = time.perf_counter() - t0
        n = count_files(out, suffix="")  # storescp names its files CR.<SOP Instance UID>
    finally:
        stop(proc, 10)
    settle(work)
    if n != len(files):
        raise SystemExit(f"receive.py: {peer} wrote {n} files, expected {len(files)}")
    return Run(peer, pdu, seconds, total / seconds / 1e6, cpu, sender_cpu, n, sync_s=sync_s)


def disk_ceiling(files: list[Path], total: int, work: Path) -> float:
    """Seconds to write the files with radtriage's own durable_write (temp, fsync, rename, folder
    fsync) into a study/series/sop layout, from memory, one after the other: no network, no
    database. No durable receiver can beat this on this volume."""
    from dicom_io.storage import durable_write

    root = work / "storage"
    root.mkdir(parents=True)
    # one folder per study and series, as radtriage lays them out (the files are sorted by study)
    blobs = [(f"{f.name[:4]}/{f.name[:4]}.1/{i}.dcm", f.read_bytes()) for i, f in enumerate(files)]
    t0 = time.perf_counter()
    for rel, data in blobs:
        durable_write(root, rel, [data])
    seconds = time.perf_counter() - t0
    del blobs
    settle(work)
    return seconds


def pg_connect(url: str, *, autocommit: bool = False):  # type: ignore[no-untyped-def]
    """A DB-API connection to a PostgreSQL URL (any SQLAlchemy driver suffix), psycopg 3 or 2."""
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        import psycopg

        return psycopg.connect(dsn, autocommit=autocommit)
    except ImportError:
        import psycopg2

        con = psycopg2.connect(dsn)
        con.autocommit = autocommit
        return con


@contextlib.contextmanager
def database(admin_url: str | None, work: Path) -> Iterator[str]:
    """An SQLite file in ``work``, or a fresh PostgreSQL database dropped afterwards."""
    if admin_url is None:
        yield f"sqlite:///{work / 'radtriage.db'}"
        return
    from sqlalchemy.engine import make_url

    name = f"radtriage_bench_{uuid.uuid4().hex[:12]}"
    admin = pg_connect(admin_url, autocommit=True)
    try:
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def count_rows(url: str) -> tuple[int, int]:
    """(instance rows, study rows), read from outside radtriage."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(f"file:{url.split(':///', 1)[1]}?mode=ro", uri=True)
    else:
        con = pg_connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT count(*) FROM instance")
        rows = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM study")
        return rows, cur.fetchone()[0]
    finally:
        con.close()


def write_config(path: Path, *, port: int, pdu: int, storage: Path, db_url: str, checkpoint: Path,
                 logfile: Path) -> None:
    import yaml

    config = {
        "node": {"ae_title": RADTRIAGE_AET, "host": "127.0.0.1", "port": port, "max_pdu_size": pdu},
        "storage": {"path": str(storage)},
        "database": {"url": db_url},
        # no study is complete (so none is scored) while the benchmark is receiving
        "completion": {"release_grace_s": 3600, "stable_s": 3600},
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "allow_untrained": True},
        "destinations": [],
        "logging": {"level": "INFO", "file": str(logfile)},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_radtriage(files: list[Path], total: int, pdu: int, work: Path, checkpoint: Path,
                  admin_url: str | None, sender_env: dict[str, str]) -> Run:
    work.mkdir(parents=True)
    storage = work / "storage"
    port = free_port()
    stderr = work / "radtriage.stderr"
    with database(admin_url, work) as db_url:
        cfg = work / "config.yaml"
        write_config(cfg, port=port, pdu=pdu, storage=storage, db_url=db_url, checkpoint=checkpoint,
                     logfile=work / "radtriage.log")
        with stderr.open("wb") as err:
            proc = subprocess.Popen([radtriage_exe(), "serve", "--config", str(cfg)], env=clean_env(),
                                    stdout=err, stderr=subprocess.STDOUT)
        try:
            wait_for_echo(RADTRIAGE_AET, port, proc, stderr, 300)
            seconds, cpu, sender_cpu = send(RADTRIAGE_AET, port, files, proc.pid, sender_env)
            rows, studies = count_rows(db_url)
            n = count_files(storage)
        finally:
            code = stop(proc)
        if code != 0:
            raise SystemExit(f"receive.py: radtriage exited with {code} after SIGTERM\n"
                             f"{stderr.read_text(errors='replace')[-3000:]}")
    settle(work)
    if rows != len(files) or n != len(files):
        raise SystemExit(f"receive.py: radtriage has {rows} instance rows and {n} files, "
                         f"expected {len(files)} of each")
    return Run("radtriage", pdu, seconds, total / seconds / 1e6, cpu, sender_cpu, n, rows=rows,
               studies=studies, exit_code=code)


# -- main -------------------------------------------------------------------------------------


def parse_pdus(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers, e.g. 16384,131072") from None
    if not values or any(v < 4096 for v in values):
        raise argparse.ArgumentTypeError("each max PDU is at least 4096 bytes")
    return values


def parse_peers(text: str) -> list[str]:
    peers = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad or "radtriage" not in peers or not any(p in BASELINES for p in peers):
        raise argparse.ArgumentTypeError(
            f"comma-separated, from {', '.join(PEERS)}; radtriage and at least one storescp")
    return [p for p in PEERS if p in peers]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Writes about 2 x (instances x size^2 x 2 bytes) under "
                                       "--workdir per run, deleted after each run.")
    p.add_argument("--instances", type=int, default=200, help="instances sent per run (default 200)")
    p.add_argument("--size", type=int, default=2048, help="rows = columns (default 2048)")
    p.add_argument("--bits", type=int, default=12, choices=range(8, 17), metavar="8..16",
                   help="bits stored, 16 allocated (default 12)")
    p.add_argument("--views", type=int, default=4, help="instances per study (default 4)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per receiver, rotating the order; the median is reported (default 3)")
    p.add_argument("--pdu", type=parse_pdus, default=[STORESCP_MAX_PDU],
                   help="max receive PDU given to every receiver (storescp --max-pdu, radtriage "
                        "node.max_pdu_size); comma-separated to compare several. storescp accepts "
                        f"at most {STORESCP_MAX_PDU}: above that it runs at {STORESCP_MAX_PDU} and "
                        f"the comparison is marked unequal (default {STORESCP_MAX_PDU})")
    p.add_argument("--peers", type=parse_peers, default=list(PEERS),
                   help=f"receivers to measure (default {','.join(PEERS)})")
    p.add_argument("--sender-nagle", action="store_true",
                   help="run storescu with DCMTK's default (Nagle on) instead of TCP_NODELAY=1")
    p.add_argument("--no-disk", action="store_true",
                   help="skip the disk ceiling (radtriage's durable_write of every file, no network)")
    p.add_argument("--database", metavar="ADMIN_URL",
                   help="PostgreSQL server URL, e.g. postgresql://postgres@127.0.0.1:5432/test: each "
                        "radtriage run gets a fresh database there, dropped after (default: SQLite)")
    p.add_argument("--workdir", type=Path,
                   help="where received files go (default: $TMPDIR); put it on the volume to measure")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--check", metavar="BASELINE",
                   choices=[n for b in BASELINES for n in (b, f"{b}+sync")],
                   help=f"exit 1 when radtriage is below {TARGET_RATIO}x this baseline (storescp, "
                        "storescp+sync, storescp-nodelay, storescp-nodelay+sync) at any --pdu; "
                        "default: exit 0 whenever the measurement itself succeeded")
    args = p.parse_args(argv)
    if args.instances < 1 or args.repeat < 1 or args.size < 8 or args.views < 1:
        p.error("--instances, --repeat, --views must be >= 1 and --size >= 8")
    if args.check and args.check.removesuffix("+sync") not in args.peers:
        p.error(f"--check {args.check}: that storescp is not among --peers")

    for tool in ("storescu", "storescp", "echoscu"):
        require_tool(tool)
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="radtriage-bench-", dir=base))
    machine = machine_info(work)
    files, total = generate(args.instances, args.size, args.bits, args.views)
    checkpoint = plumbing_checkpoint()
    db_kind = "postgresql" if args.database else "sqlite"
    sender_env = clean_env() if args.sender_nagle else clean_env(TCP_NODELAY="1")
    sender_desc = "DCMTK default, Nagle on" if args.sender_nagle else "TCP_NODELAY=1"

    print(f"machine:   {machine['uname']}, {machine['cpu_count']} CPUs ({machine['cpu_model']}), "
          f"{machine['memory_gib']} GiB RAM, load average {machine['load_average_1m']} at start")
    print(f"disk:      {machine['workdir']} on {machine['filesystem']}, {machine['disk_free_gib']} GiB free")
    print(f"software:  {machine['dcmtk']}; Python {machine['python']}, pynetdicom {machine['pynetdicom']}, "
          f"pydicom {machine['pydicom']}")
    print(f"data:      {len(files)} CR instances {args.size}x{args.size}, 16 bits allocated "
          f"({args.bits} stored), {args.views} per study, {total / 1e6:.1f} MB in all")
    print(f"sender:    `{' '.join(storescu_cmd('<AET>', 0, [])[:-2])} 127.0.0.1 <port> "
          f"<{len(files)} files>` ({sender_desc}), one per run; its wall clock is measured")
    print("storescp:  defaults + --max-pdu <PDU> -od <tmp> <port>; it does NOT fsync. "
          "storescp-nodelay: the same with TCP_NODELAY=1")
    print(f"radtriage: node.max_pdu_size <PDU>, {db_kind} database; file fsynced, renamed, folder "
          "fsynced and row committed before each Success; release_grace_s = stable_s = 3600 s, "
          "so nothing is scored during the measurement")
    print(flush=True)

    runs: list[Run] = []
    disk: list[float] = []
    order = 0
    try:
        if not args.no_disk:
            for i in range(args.repeat):
                log(f"disk ceiling: run {i + 1}/{args.repeat}, durable_write of every file, no network")
                disk.append(disk_ceiling(files, total, work / f"disk{i}"))
                log(f"  disk: {disk[-1]:.2f} s, {total / disk[-1] / 1e6:.0f} MB/s")
        for pdu in args.pdu:
            for i in range(args.repeat):
                k = i % len(args.peers)
                for peer in args.peers[k:] + args.peers[:k]:
                    order += 1
                    log(f"max PDU {pdu}: run {i + 1}/{args.repeat}, {peer}")
                    rundir = work / f"run{order}"
                    if peer == "radtriage":
                        r = run_radtriage(files, total, pdu, rundir, checkpoint, args.database, sender_env)
                    else:
                        r = run_storescp(files, total, min(pdu, STORESCP_MAX_PDU), rundir,
                                         nodelay=peer == "storescp-nodelay", sender_env=sender_env)
                    r.order, r.requested_pdu = order, pdu
                    runs.append(r)
                    cpu = f", receiver CPU {r.receiver_cpu_s:.1f} s" if r.receiver_cpu_s is not None else ""
                    extra = (f", {r.rows} rows / {r.studies} studies, {r.files_on_disk} files, exit {r.exit_code}"
                             if peer == "radtriage" else f", {r.files_on_disk} files")
                    log(f"  {peer}: {r.seconds:.2f} s, {r.mb_per_s:.0f} MB/s{cpu}, sender CPU "
                        f"{r.sender_cpu_s:.1f} s{extra}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = []
    print(f"median of {args.repeat} run(s) per receiver; MB = 10^6 bytes; {total / 1e6:.1f} MB per run")
    print(f"{'max PDU':>8}  {'receiver':<27} {'seconds':>8} {'MB/s':>6} {'rcv CPU s':>9} {'snd CPU s':>9}")
    for pdu in args.pdu:
        row: dict = {"pdu": pdu, "peers": {}, "ratios": {}}
        for peer in args.peers:
            mine = [r for r in runs if r.peer == peer and r.requested_pdu == pdu]
            secs = median([r.seconds for r in mine])
            rcpu = median([r.receiver_cpu_s for r in mine if r.receiver_cpu_s is not None])
            scpu = median([r.sender_cpu_s for r in mine])
            row["peers"][peer] = {"seconds": secs, "mb_per_s": total / secs / 1e6, "receiver_cpu_s": rcpu,
                                  "sender_cpu_s": scpu, "pdu": mine[0].pdu,
                                  "runs": [asdict(r) for r in mine]}
            label = peer + (f" @{mine[0].pdu}" if mine[0].pdu != pdu else "")
            rc = f"{rcpu:9.1f}" if rcpu is not None else f"{'-':>9}"
            print(f"{pdu:>8}  {label:<27} {secs:8.2f} {total / secs / 1e6:6.0f} {rc} {scpu:9.1f}")
            if peer != "radtriage":  # the same bytes on disk: storescu's time + a sync after it
                synced = median([r.seconds + r.sync_s for r in mine if r.sync_s is not None])
                row["peers"][f"{peer}+sync"] = {"seconds": synced, "mb_per_s": total / synced / 1e6}
                print(f"{pdu:>8}  {'  ... + sync afterwards':<27} {synced:8.2f} {total / synced / 1e6:6.0f}")
        rad = row["peers"]["radtriage"]["seconds"]
        equal = pdu <= STORESCP_MAX_PDU
        for base_peer in (b for b in BASELINES if b in args.peers):
            for name in (base_peer, f"{base_peer}+sync"):
                ratio = row["peers"][name]["seconds"] / rad
                verdict = ("PASS" if ratio >= TARGET_RATIO else "BELOW TARGET") + (
                    "" if equal else " (unequal PDU)")
                row["ratios"][name] = {"ratio": ratio, "verdict": verdict, "equal_pdu": equal}
                note = "" if name == base_peer else "  [info: same bytes on disk]"
                print(f"{pdu:>8}  radtriage / {name:<21} = {ratio:.2f}x  (target >= {TARGET_RATIO}x): "
                      f"{verdict}{note}")
        if disk:
            d = median(disk)
            row["disk_ceiling"] = {"seconds": d, "mb_per_s": total / d / 1e6, "runs": disk}
            print(f"{pdu:>8}  radtriage / disk ceiling{'':<9} = {d / rad:.2f}x  (durable_write of every "
                  f"file, no network: {d:.2f} s, {total / d / 1e6:.0f} MB/s)")
        results.append(row)
    rad_runs = [r for r in runs if r.peer == "radtriage"]
    print(f"radtriage durability, every run: {rad_runs[0].rows} instance rows, {rad_runs[0].studies} "
          f"studies, {rad_runs[0].files_on_disk} files on disk for {len(files)} sent; exit "
          f"{rad_runs[0].exit_code} on SIGTERM")
    print("note: storescp does not fsync; its files may still be in the page cache when storescu returns "
          "(\"+ sync afterwards\" adds the time a sync takes right after)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine,
            "params": {"instances": len(files), "size": args.size, "bits_stored": args.bits,
                       "views_per_study": args.views, "total_bytes": total, "repeat": args.repeat,
                       "database": db_kind, "target_ratio": TARGET_RATIO, "sender": sender_desc,
                       "storescu": storescu_cmd("<AET>", 0, [])[:-2] + ["127.0.0.1", "<port>", "<files>"]},
            "results": results,
        }, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.check:
        failed = [row["pdu"] for row in results if row["ratios"][args.check]["verdict"] != "PASS"]
        if failed:
            print(f"--check {args.check}: below {TARGET_RATIO}x at max PDU {', '.join(map(str, failed))}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
