"""Receive throughput: radtriage against DCMTK ``storescp``, same files, same ``storescu``.

    .venv/bin/python benchmarks/receive.py [--instances 200] [--size 2048] [--repeat 3]
                                           [--pdu 131072] [--database postgresql://...]
                                           [--json PATH]

The same N generated CR instances (``--size`` square, 16 bits allocated) are sent with ONE
``storescu`` invocation to each receiver in turn:

* DCMTK ``storescp`` with its default options (what an admin gets), apart from the port, the
  output folder and ``--max-pdu``. It writes each object to the page cache and answers: it
  never fsyncs;
* ``radtriage serve`` with a temporary config: the same max receive PDU (``node.max_pdu_size``),
  storage and an SQLite database (or a fresh PostgreSQL database with ``--database``) in a
  temporary folder, an untrained plumbing checkpoint on the CPU, no destinations, and
  ``completion.release_grace_s``/``stable_s`` at 3600 s so that no study is scored while the
  benchmark is receiving. Each Success is answered only after the file is written, fsynced,
  renamed, its folder fsynced and the instance row committed.

The wall-clock time of the ``storescu`` process is measured; MB/s = total bytes of the files
sent / seconds (MB = 10^6 bytes). Runs alternate between the peers; each radtriage run starts
from an empty storage folder and database. Between runs the received files are deleted and
``sync`` is called, so write-back from one run does not compete with the next.

After each radtriage run the instance rows and the files on disk are counted (both must equal
the number sent), then radtriage is stopped with SIGTERM and must exit 0.

Target (from the issue): radtriage, durable and with its database rows, at least 0.8x storescp.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
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
from dataclasses import asdict, dataclass, field
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


# -- helpers ----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"receive.py: {name} not found; install DCMTK (`make test-tools`)")
    return path


def radtriage_exe() -> str:
    local = Path(sys.executable).parent / "radtriage"
    if local.exists():
        return str(local)
    found = shutil.which("radtriage")
    if found is None:
        sys.exit("receive.py: the radtriage console script is not installed (`make install`)")
    return found


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
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk_version(),
    }


# -- the files --------------------------------------------------------------------------------


def generate(instances: int, size: int, bits: int, views: int) -> tuple[list[Path], int]:
    """Return the benchmark files (cached in /tmp by a hash of what makes them) and their bytes.

    Metadata comes from dicom_io.synthetic.make_instance; the 2k pixel arrays are made once per
    view with synthetic._pixels and reused across studies (rendering 200 of them would take a
    minute and the network path does not look at pixel values).
    """
    from dicom_io import synthetic

    src = Path(synthetic.__file__).read_bytes()
    key = hashlib.sha256(
        f"{GENERATOR_VERSION}:{instances}:{size}:{bits}:{views}:".encode() + src
    ).hexdigest()[:16]
    folder = CACHE_ROOT / f"cr-{instances}x{size}-{bits}bit-{key}"
    done = folder / "COMPLETE"
    if done.is_file():
        files = sorted(folder.glob("*.dcm"))
        if len(files) == instances:
            log(f"using cached files in {folder}")
            return files, sum(f.stat().st_size for f in files)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"generating {instances} CR instances {size}x{size} ({bits} bits stored) in {folder}")
    t0 = time.perf_counter()
    pool = [synthetic._pixels(synthetic.StudySpec(rows=size, columns=size, bits_stored=bits, seed=7), v)
            .tobytes() for v in range(views)]
    files = []
    studies = (instances + views - 1) // views
    n = 0
    for s in range(studies):
        spec = synthetic.StudySpec(
            views=views, rows=8, columns=8, bits_stored=bits, modality="CR",
            body_part=("WRIST", "HAND", "ELBOW", "SHOULDER")[s % 4],
            patient_id=f"BENCH-{s:04d}", accession_number=f"BENCH{s:05d}", seed=s,
        )
        for v in range(views):
            if n == instances:
                break
            ds = synthetic.make_instance(spec, v)
            ds.Rows = ds.Columns = size
            ds.PixelData = pool[v]
            path = folder / f"s{s:03d}-v{v}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            n += 1
    done.write_text(f"{instances} files\n")
    log(f"generated in {time.perf_counter() - t0:.1f} s")
    return files, sum(f.stat().st_size for f in files)


def plumbing_checkpoint() -> Path:
    """An untrained DenseNet-169 checkpoint exactly as tests/conftest.py makes one (cached)."""
    path = CACHE_ROOT / "untrained-densenet169.pt"
    if path.is_file():
        return path
    log("writing an untrained plumbing checkpoint (radtriage refuses to start without a model)")
    import torch

    from inference.model import ModelCard, build_model, save_checkpoint

    torch.manual_seed(1234)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_checkpoint(tmp, build_model("densenet169"),
                    ModelCard(name="plumbing-test", version="0.0.1", trained=False,
                              description="random weights, for plumbing tests only"))
    os.replace(tmp, path)
    return path


# -- peers ------------------------------------------------------------------------------------


@dataclass
class Run:
    peer: str
    pdu: int
    seconds: float
    mb_per_s: float
    receiver_cpu_s: float | None
    files_on_disk: int
    rows: int | None = None
    studies: int | None = None
    exit_code: int | None = None
    order: int = 0


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


def send(aec: str, port: int, files: list[Path], receiver_pid: int) -> tuple[float, float | None]:
    """Run the one storescu; return its wall-clock seconds and the receiver's CPU seconds."""
    cmd = storescu_cmd(aec, port, files)
    cpu0 = cpu_seconds(receiver_pid)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    cpu1 = cpu_seconds(receiver_pid)
    if r.returncode != 0:
        raise SystemExit(f"receive.py: storescu to {aec} failed ({r.returncode}):\n"
                         f"{(r.stdout + r.stderr)[-3000:]}")
    return seconds, (cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)


def count_instances(storage: Path, suffix: str = ".dcm") -> tuple[int, int]:
    """Files (ending in ``suffix``) under ``storage`` outside .tmp, quarantine and outputs."""
    n = size = 0
    for dirpath, dirnames, filenames in os.walk(storage):
        if Path(dirpath) == storage:
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for f in filenames:
            if f.endswith(suffix):
                n += 1
                size += os.path.getsize(os.path.join(dirpath, f))
    return n, size


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


def run_storescp(files: list[Path], total: int, pdu: int, work: Path) -> Run:
    out = work / "storescp-out"
    out.mkdir(parents=True)
    port = free_port()
    logfile = work / "storescp.log"
    with logfile.open("wb") as lf:
        proc = subprocess.Popen(["storescp", "--max-pdu", str(pdu), "-od", str(out), str(port)],
                                stdout=lf, stderr=subprocess.STDOUT)
    try:
        wait_for_echo(STORESCP_AET, port, proc, logfile, 30)
        seconds, cpu = send(STORESCP_AET, port, files, proc.pid)
        n, _ = count_instances(out, suffix="")  # storescp names files CR.<SOP Instance UID>
    finally:
        stop(proc, 10)
    settle(out)
    if n != len(files):
        raise SystemExit(f"receive.py: storescp wrote {n} files, expected {len(files)}")
    return Run("storescp", pdu, seconds, total / seconds / 1e6, cpu, n)


@contextlib.contextmanager
def database(admin_url: str | None, work: Path) -> Iterator[str]:
    """An SQLite file in ``work``, or a fresh PostgreSQL database dropped afterwards."""
    if admin_url is None:
        yield f"sqlite:///{work / 'radtriage.db'}"
        return
    import psycopg2
    from sqlalchemy.engine import make_url

    name = f"radtriage_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def count_rows(url: str) -> tuple[int, int]:
    """(instance rows, study rows), read outside radtriage."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return (con.execute("SELECT count(*) FROM instance").fetchone()[0],
                    con.execute("SELECT count(*) FROM study").fetchone()[0])
        finally:
            con.close()
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    con = psycopg2.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                           dbname=u.database)
    try:
        with con.cursor() as cur:
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
                  admin_url: str | None) -> Run:
    work.mkdir(parents=True)
    storage = work / "storage"
    port = free_port()
    logfile = work / "radtriage.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADTRIAGE_")}
    with database(admin_url, work) as db_url:
        cfg = work / "config.yaml"
        write_config(cfg, port=port, pdu=pdu, storage=storage, db_url=db_url, checkpoint=checkpoint,
                     logfile=logfile)
        with (work / "radtriage.stderr").open("wb") as err:
            proc = subprocess.Popen([radtriage_exe(), "serve", "--config", str(cfg)], env=env,
                                    stdout=err, stderr=subprocess.STDOUT)
        try:
            wait_for_echo(RADTRIAGE_AET, port, proc, work / "radtriage.stderr", 300)
            seconds, cpu = send(RADTRIAGE_AET, port, files, proc.pid)
            rows, studies = count_rows(db_url)
            n, _ = count_instances(storage)
        finally:
            code = stop(proc)
        if code != 0:
            tail = (work / "radtriage.stderr").read_text(errors="replace")[-3000:]
            raise SystemExit(f"receive.py: radtriage exited with {code} after SIGTERM\n{tail}")
    settle(work)
    if rows != len(files) or n != len(files):
        raise SystemExit(f"receive.py: radtriage has {rows} instance rows and {n} files, "
                         f"expected {len(files)} of each")
    return Run("radtriage", pdu, seconds, total / seconds / 1e6, cpu, n, rows=rows, studies=studies,
               exit_code=code)


# -- main -------------------------------------------------------------------------------------


@dataclass
class Summary:
    pdu: int
    storescp_s: float
    storescp_mb_s: float
    radtriage_s: float
    radtriage_mb_s: float
    ratio: float
    verdict: str
    runs: list[dict] = field(default_factory=list)


def parse_pdus(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers, e.g. 16384,131072") from None
    for v in values:
        if not 4096 <= v <= STORESCP_MAX_PDU:
            raise argparse.ArgumentTypeError(
                f"{v}: storescp accepts --max-pdu 4096..{STORESCP_MAX_PDU}, and both receivers "
                f"get the same value")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=int, default=200, help="instances sent (default 200)")
    p.add_argument("--size", type=int, default=2048, help="rows = columns (default 2048)")
    p.add_argument("--bits", type=int, default=12, choices=range(8, 17), metavar="8..16",
                   help="bits stored, 16 allocated (default 12)")
    p.add_argument("--views", type=int, default=4, help="instances per study (default 4)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per peer, alternating which goes first; the median is reported (default 3)")
    p.add_argument("--pdu", type=parse_pdus, default=[STORESCP_MAX_PDU],
                   help="max receive PDU given to BOTH receivers (storescp --max-pdu, radtriage "
                        f"node.max_pdu_size); comma-separated to compare several (default {STORESCP_MAX_PDU})")
    p.add_argument("--database", metavar="ADMIN_URL",
                   help="PostgreSQL server URL, e.g. postgresql://postgres@127.0.0.1:5432/test: each "
                        "radtriage run gets a fresh database there, dropped after (default: SQLite)")
    p.add_argument("--workdir", type=Path, help="where received files go (default: a folder in $TMPDIR); "
                   "put it on the volume you mean to measure")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--check", action="store_true",
                   help=f"exit 1 when radtriage is below {TARGET_RATIO}x storescp (default: exit 0 "
                        "whenever the measurement itself succeeded)")
    args = p.parse_args(argv)
    if args.instances < 1 or args.repeat < 1 or args.size < 8 or args.views < 1:
        p.error("--instances, --repeat, --views must be >= 1 and --size >= 8")

    for tool in ("storescu", "storescp", "echoscu"):
        require_tool(tool)
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="radtriage-bench-", dir=base))
    machine = machine_info(work)
    files, total = generate(args.instances, args.size, args.bits, args.views)
    checkpoint = plumbing_checkpoint()
    db_kind = "postgresql" if args.database else "sqlite"

    print(f"machine: {machine['uname']}, {machine['cpu_count']} CPUs ({machine['cpu_model']}), "
          f"{machine['memory_gib']} GiB RAM")
    print(f"disk:    {machine['workdir']} on {machine['filesystem']}, {machine['disk_free_gib']} GiB free")
    print(f"tools:   {machine['dcmtk']}; Python {machine['python']}, pynetdicom {machine['pynetdicom']}, "
          f"pydicom {machine['pydicom']}")
    print(f"data:    {len(files)} CR instances {args.size}x{args.size}, 16 bits allocated "
          f"({args.bits} stored), {total / 1e6:.1f} MB in all, in {files[0].parent}")
    print(f"sender:  one `{' '.join(storescu_cmd('<AET>', 0, [])[:-2])} 127.0.0.1 <port> "
          f"<{len(files)} files>` per run, wall clock of the storescu process")
    print("storescp: default options + --max-pdu <PDU> -od <tmp> <port>; it does NOT fsync")
    print(f"radtriage: node.max_pdu_size <PDU>, {db_kind} database, fsync + rename + dir fsync + "
          "row committed before each Success; release_grace_s = stable_s = 3600 s so nothing is "
          "scored during the measurement")
    print(flush=True)

    summaries: list[Summary] = []
    order = 0
    try:
        for pdu in args.pdu:
            runs: list[Run] = []
            for i in range(args.repeat):
                peers = ("storescp", "radtriage") if i % 2 == 0 else ("radtriage", "storescp")
                for peer in peers:
                    order += 1
                    log(f"PDU {pdu}: run {i + 1}/{args.repeat}, {peer}")
                    if peer == "storescp":
                        r = run_storescp(files, total, pdu, work / f"run{order}")
                    else:
                        r = run_radtriage(files, total, pdu, work / f"run{order}", checkpoint,
                                          args.database)
                    r.order = order
                    runs.append(r)
                    extra = (f", {r.rows} rows / {r.studies} studies, {r.files_on_disk} files, exit {r.exit_code}"
                             if peer == "radtriage" else f", {r.files_on_disk} files")
                    cpu = f", receiver CPU {r.receiver_cpu_s:.1f} s" if r.receiver_cpu_s is not None else ""
                    log(f"  {peer}: {r.seconds:.2f} s, {r.mb_per_s:.0f} MB/s{cpu}{extra}")
            med = {peer: statistics.median(r.seconds for r in runs if r.peer == peer)
                   for peer in ("storescp", "radtriage")}
            ratio = med["storescp"] / med["radtriage"]
            summaries.append(Summary(
                pdu=pdu, storescp_s=med["storescp"], storescp_mb_s=total / med["storescp"] / 1e6,
                radtriage_s=med["radtriage"], radtriage_mb_s=total / med["radtriage"] / 1e6,
                ratio=ratio, verdict="PASS" if ratio >= TARGET_RATIO else "BELOW TARGET",
                runs=[asdict(r) for r in runs]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"median of {args.repeat} run(s) per peer; MB = 10^6 bytes; {total / 1e6:.1f} MB per run")
    print(f"{'max PDU':>8}  {'peer':<10} {'seconds':>8} {'MB/s':>8} {'rcv CPU s':>9}")
    for s in summaries:
        for peer in ("storescp", "radtriage"):
            cpus = [r["receiver_cpu_s"] for r in s.runs if r["peer"] == peer and r["receiver_cpu_s"] is not None]
            cpu = f"{statistics.median(cpus):9.1f}" if cpus else f"{'-':>9}"
            secs = getattr(s, f"{peer}_s")
            print(f"{s.pdu:>8}  {peer:<10} {secs:8.2f} {getattr(s, f'{peer}_mb_s'):8.0f} {cpu}")
        print(f"{s.pdu:>8}  ratio radtriage/storescp = {s.ratio:.2f}x (target >= {TARGET_RATIO}x): {s.verdict}")
    rad = [r for s in summaries for r in s.runs if r["peer"] == "radtriage"]
    print(f"radtriage durability: every run had {rad[0]['rows']} instance rows, {rad[0]['studies']} studies "
          f"and {rad[0]['files_on_disk']} files on disk for {len(files)} sent, and exited "
          f"{rad[0]['exit_code']} on SIGTERM")
    print("note: storescp does not fsync; its files were still in the page cache when storescu returned")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine,
            "params": {"instances": len(files), "size": args.size, "bits_stored": args.bits,
                       "views_per_study": args.views, "total_bytes": total, "repeat": args.repeat,
                       "database": db_kind, "target_ratio": TARGET_RATIO,
                       "storescu": storescu_cmd("<AET>", 0, [])[:-2] + ["127.0.0.1", "<port>", "<files>"]},
            "results": [asdict(s) for s in summaries],
        }, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.check and not all(s.verdict == "PASS" for s in summaries):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
