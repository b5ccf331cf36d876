"""End to end: from the last instance of a study sent by ``storescu`` to its SR in a ``storescp`` PACS.

    .venv/bin/python benchmarks/e2e.py [--studies 50] [--senders 4] [--per-sender 15]
                                       [--size 2048] [--json PATH] [--check]

``radtriage serve`` runs with its embedded defaults (the demo model ``models/radtriage-demo.pt``,
``model.device: auto``, the default batch size, completion timing, preparation workers and
dispatch interval). A temporary config changes only what a benchmark must: ``node.port`` (a
free port), ``storage.path`` and ``database.url`` (SQLite in a temporary folder),
``model.checkpoint`` (the same demo file, as an absolute path, because relative paths resolve
against the config's folder) and one DICOM destination, the PACS. The effective settings that
matter are printed. The benchmark waits for a C-ECHO before timing anything.

* **PACS**: DCMTK ``storescp -v -od DIR`` on a free port, with ``TCP_NODELAY=1`` (Nagle off, like
  a real PACS; ``benchmarks/README.md`` says why it matters for DCMTK). Its log is read line by
  line in a thread; the moment of each ``storing DICOM file`` line (the data set has been
  received) is the arrival, on this process's monotonic clock. Each file is then read with pydicom
  (header only) for its Modality and Study Instance UID. Only the SR counts for latency; the
  other products (the summary Secondary Capture) are reported as "last product".
* **Data**: CR studies of 2 to 4 views (2, 3, 4, 2, 3, 4, ...), each view ``--size`` square (default
  2048), 16 bits allocated, 12 stored, MONOCHROME2, uncompressed, about 8.4 MB. The content is
  ``training.phantoms`` radiographs (upper-limb anatomy, half the studies with findings, the
  data the demo model was trained on) rendered at ``--size / 2`` on the long side, upscaled 2x
  and centred on a black square; the metadata is ``dicom_io.synthetic.make_instance``'s, with the
  phantom's study type as Body Part Examined. A pool of ``POOL`` phantom studies is rendered once
  and reused; every study sent has its own UIDs. Files are cached in
  ``$TMPDIR/radtriage-bench-cache/e2e-*`` (delete it when done).
* **Latency** (unloaded): one warm-up study first (not counted: the daemon's first study loads
  things), then ``--studies`` studies, one at a time: a ``storescu -v`` per study (one
  association, ``TCP_NODELAY=1``), then wait for its SR (60 s at most: a failure) and for its
  other products, then the next. Latency = SR arrival - the moment storescu logged its last
  ``Sending Store Request`` (read line by line from its stderr). That moment is when the last
  instance *starts* going out, so the latency includes its transfer and durable write; the
  medians of (last Store Response - that moment) and (storescu exit - that moment) are printed
  so the other definitions can be derived.
* **Throughput** (loaded): ``--senders`` threads, each a loop of ``storescu`` sending its own
  ``--per-sender`` studies one after another without waiting for results. Studies/min = studies
  whose SR arrived / (last SR arrival - first storescu start) x 60.
* **Memory**: resident memory (VmRSS) of the ``radtriage serve`` process plus all its descendants
  (the preparation worker processes), sampled every 0.25 s; the peak of that sum, and the
  daemon's own high-water mark (VmHWM) at the end.
* **Where the time goes**: the daemon's own log lines (``study complete``, ``scored ... over``,
  ``scored in ...``, ``sr sent to``) are matched to each latency study and put on the same clock
  (wall-clock timestamps with millisecond resolution, shifted by time.time() - time.monotonic()).

At the end radtriage is stopped with SIGTERM (it must exit 0), then storescp; the temporary
folder is removed. Target (from the issue, on the 2-core CPU machine with default settings): p95
latency at most 3 s. ``--check`` makes the exit status 1 when p95 > 3 s or a study timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import inspect
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from receive import (  # noqa: E402  (the helpers the receive benchmark already has)
    CACHE_ROOT, clean_env, free_port, log, machine_info, prune, source_hash, stop,
)

TARGET_P95_S = 3.0
SR_TIMEOUT_S = 60.0
GENERATOR_VERSION = 1  # bump when the generated files change
POOL = 12  # phantom studies rendered (4 views each) and reused
PHANTOM_SEED = 7
RADTRIAGE_AET = "RADTRIAGE"
PACS_AET = "PACS"
CALLING_AET = "E2ESCU"
TOOLS = ("storescu", "storescp", "echoscu")
TOOL: dict[str, str] = {}  # name -> DCMTK's executable, filled by dcmtk_tools() at start
DEMO_MODEL = ROOT / "models" / "radtriage-demo.pt"


def fail(msg: str) -> "SystemExit":
    return SystemExit(f"e2e.py: {msg}")


def dcmtk_tools() -> dict[str, str]:
    """Absolute paths of DCMTK's storescu, storescp and echoscu.

    pynetdicom installs its own ``storescu``, ``storescp`` and ``echoscu`` into the virtual
    environment, with other options and output; with the venv on PATH those come first. So each
    PATH entry is tried in turn and a tool counts only when its ``--version`` names DCMTK.
    """
    found: dict[str, str] = {}
    for name in TOOLS:
        for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
            path = shutil.which(name, path=folder) if folder else None
            if path is None:
                continue
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
                if "dcmtk" in (out.stdout + out.stderr).lower():
                    found[name] = path
                    break
    missing = [t for t in TOOLS if t not in found]
    if missing:
        raise fail(f"DCMTK's {', '.join(missing)} not found on PATH (pynetdicom's tools of the same "
                   "name do not count); install DCMTK (`make test-tools`)")
    return found


# -- the files --------------------------------------------------------------------------------


@dataclass
class Study:
    index: int
    uid: str
    files: list[Path]
    study_type: str
    abnormal: bool


def _render_pool(size: int) -> list[tuple[str, int, list]]:
    """POOL phantom studies of 4 views each, as uint16 size x size arrays (12 bits stored)."""
    import cv2
    import numpy as np
    from training import phantoms

    half = max(64, size // 2)
    plans = phantoms.plan_studies(POOL, PHANTOM_SEED, abnormal_fraction=0.5, size=half)
    pool = []
    for plan in plans:
        views = tuple(phantoms.VIEWS[plan.study_type][v % len(phantoms.VIEWS[plan.study_type])]
                      for v in range(4))
        rendered, _ = phantoms.render_study(dataclasses.replace(plan, views=views), size=half)
        images = []
        for rv in rendered:
            img = rv.image
            scale = size / max(img.shape)
            h, w = (min(size, round(d * scale)) for d in img.shape)
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
            canvas = np.zeros((size, size), np.float32)
            y0, x0 = (size - h) // 2, (size - w) // 2
            canvas[y0:y0 + h, x0:x0 + w] = np.clip(img, 0, 1)
            # into part of the 12-bit range, as a CR plate reader would store it
            images.append(np.round(200 + canvas * 3600).astype(np.uint16))
        pool.append((plan.study_type, plan.label, images))
    return pool


def _write_study(index: int, folder: Path, pool: list[tuple[str, int, list]]) -> None:
    from dicom_io import synthetic

    study_type, label, images = pool[index % len(pool)]
    n_views = 2 + index % 3
    spec = synthetic.StudySpec(
        views=n_views, rows=8, columns=8, bits_stored=12, modality="CR", photometric="MONOCHROME2",
        body_part=study_type, patient_id=f"E2E-{index:04d}", accession_number=f"E2E{index:05d}",
        seed=index)
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for v in range(n_views):
        pixels = images[v]
        ds = synthetic.make_instance(spec, v)  # the metadata of a real instance, 8x8 pixels
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.WindowCenter, ds.WindowWidth = 200 + 1800, 3600
        ds.save_as(staging / f"v{v}.dcm", enforce_file_format=True)
    (staging / "STUDY").write_text(f"{spec.study_instance_uid}\n{study_type}\n{label}\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)


def generate(count: int, size: int) -> list[Study]:
    """Studies 0 .. count-1 (cached; missing ones are made; the pool is rendered only then)."""
    from dicom_io import synthetic
    from training import phantoms

    key = source_hash(Path(synthetic.__file__), Path(phantoms.__file__),
                      extra=f"{GENERATOR_VERSION}:{size}:{POOL}:{PHANTOM_SEED}:"
                            + inspect.getsource(_render_pool) + inspect.getsource(_write_study))
    root = CACHE_ROOT / f"e2e-{size}-{key}"
    prune(root, f"e2e-{size}-*")
    root.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (root / f"s{i:04d}" / "STUDY").is_file()]
    if missing:
        log(f"rendering {POOL} phantom studies (4 views, {size}x{size}) for {len(missing)} new "
            f"studies in {root}")
        t0 = time.perf_counter()
        pool = _render_pool(size)
        for i in missing:
            _write_study(i, root / f"s{i:04d}", pool)
        log(f"generated in {time.perf_counter() - t0:.1f} s")
    else:
        log(f"using cached studies in {root}")
    studies = []
    for i in range(count):
        folder = root / f"s{i:04d}"
        uid, study_type, label = (folder / "STUDY").read_text().split()
        studies.append(Study(i, uid, sorted(folder.glob("v*.dcm")), study_type, label == "1"))
    return studies


# -- the PACS ---------------------------------------------------------------------------------


@dataclass
class Arrival:
    t: float  # monotonic, when storescp logged the file
    path: str
    modality: str = "?"
    study_uid: str = "?"
    series_description: str = ""


class Pacs:
    """DCMTK storescp; records when each object arrives and what it is."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.arrivals: dict[str, list[Arrival]] = {}
        self.unreadable: list[str] = []
        self.associations = 0
        self._cond = threading.Condition()
        self._pending: "queue.Queue[Arrival | None]" = queue.Queue()
        self.proc: subprocess.Popen | None = None
        self.tail: list[str] = []

    def start(self) -> "Pacs":
        self.folder.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [TOOL["storescp"], "-v", "-aet", PACS_AET, "-od", str(self.folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
            env=clean_env(TCP_NODELAY="1"))
        threading.Thread(target=self._read, daemon=True, name="pacs-log").start()
        threading.Thread(target=self._resolve, daemon=True, name="pacs-files").start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            t = time.monotonic()
            self.tail = (self.tail + [line.rstrip()])[-50:]
            if "storing DICOM file:" in line:
                path = line.split("storing DICOM file:", 1)[1].strip()
                self._pending.put(Arrival(t, path))
            elif "Association Received" in line:
                self.associations += 1
        self._pending.put(None)

    def _resolve(self) -> None:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        while (a := self._pending.get()) is not None:
            deadline = time.monotonic() + 10
            while True:  # storescp logs the name before it writes the file
                try:
                    ds = dcmread(a.path, stop_before_pixels=True,
                                 specific_tags=["Modality", "StudyInstanceUID", "SeriesDescription"])
                    a.modality, a.study_uid = str(ds.Modality), str(ds.StudyInstanceUID)
                    a.series_description = str(ds.get("SeriesDescription", ""))
                    break
                except (OSError, AttributeError, ValueError, EOFError, KeyError, InvalidDicomError) as exc:
                    if time.monotonic() > deadline:
                        self.unreadable.append(f"{a.path}: {type(exc).__name__}: {exc}")
                        break
                    time.sleep(0.02)
            with self._cond:
                self.arrivals.setdefault(a.study_uid, []).append(a)
                self._cond.notify_all()

    def of(self, study_uid: str) -> list[Arrival]:
        with self._cond:
            return list(self.arrivals.get(study_uid, []))

    def sr(self, study_uid: str) -> Arrival | None:
        return next((a for a in self.of(study_uid) if a.modality == "SR"), None)

    def wait(self, study_uid: str, deadline: float, products: int = 0) -> Arrival | None:
        """Wait until the study's SR (and, with ``products``, that many objects) arrived."""
        with self._cond:
            while True:
                got = self.arrivals.get(study_uid, [])
                sr = next((a for a in got if a.modality == "SR"), None)
                if sr is not None and len(got) >= products:
                    return sr
                left = deadline - time.monotonic()
                if left <= 0:
                    return sr
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the sender -------------------------------------------------------------------------------


@dataclass
class Sent:
    study: int
    start: float
    last_sending: float | None = None  # the last "Sending Store Request" line
    last_response: float | None = None
    exit: float | None = None
    successes: int = 0
    instances: int = 0
    rc: int | None = None
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.successes == self.instances and self.last_sending is not None


def send(study: Study, port: int, calling: str) -> Sent:
    cmd = [TOOL["storescu"], "-v", "-aet", calling, "-aec", RADTRIAGE_AET, "127.0.0.1", str(port),
           *map(str, study.files)]
    r = Sent(study.index, time.monotonic(), instances=len(study.files))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            bufsize=1, env=clean_env(TCP_NODELAY="1"))
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        t = time.monotonic()
        lines.append(line)
        if "Sending Store Request" in line:
            r.last_sending = t
        elif "Received Store Response" in line:
            r.last_response = t
            r.successes += "(Success)" in line
    r.rc = proc.wait()
    r.exit = time.monotonic()
    if not r.ok:
        r.output = "".join(lines)[-2000:]
    return r


# -- the daemon -------------------------------------------------------------------------------


def radtriage_exe() -> str:
    local = Path(sys.executable).parent / "radtriage"
    if local.exists():
        return str(local)
    found = shutil.which("radtriage")
    if found is None:
        raise fail("the radtriage console script is not installed (`make install`)")
    return found


def write_config(path: Path, *, port: int, work: Path, pacs_port: int) -> None:
    import yaml

    config = {  # only what must differ from the embedded defaults
        "node": {"port": port},
        "storage": {"path": str(work / "storage")},
        "database": {"url": f"sqlite:///{work / 'radtriage.db'}"},
        "model": {"checkpoint": str(DEMO_MODEL)},  # the default file; relative paths would
                                                   # resolve against this config's folder
        "destinations": [{"name": "pacs", "type": "dicom", "ae_title": PACS_AET,
                          "host": "127.0.0.1", "port": pacs_port}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def settings(cfg_path: Path) -> dict:
    """The effective settings that matter, as radtriage itself validates and resolves them."""
    from daemon.config import load_config

    cfg = load_config(cfg_path, environ={})
    out: dict = {}
    for section, keys in (("model", ("checkpoint", "device", "batch_size", "max_wait_ms",
                                     "studies_in_flight", "queue_views", "precision", "compile",
                                     "cpu_threads", "heatmap")),
                          ("completion", ("release_grace_s", "stable_s", "sweep_interval_s")),
                          ("decoding", ("workers", "working_size", "reduced_decode")),
                          ("dispatch", ("interval_s",)),
                          ("report", ("summary", "key_objects", "presentation_state"))):
        obj = getattr(cfg, section)
        for k in keys:
            if hasattr(obj, k):
                v = getattr(obj, k)
                out[f"{section}.{k}"] = str(v) if isinstance(v, Path) else v
    dest, rep = cfg.destinations[0], cfg.report
    made = {"sr": True, "summary": rep.summary != "off", "kos": rep.key_objects,
            "gsps": rep.presentation_state}
    out["destination.objects"] = [k for k, on in made.items() if on and dest.takes(k)]
    return out


def wait_for_echo(port: int, proc: subprocess.Popen, logfile: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise fail(f"radtriage exited with {proc.returncode} at start\n{tail(logfile)}")
        r = subprocess.run([TOOL["echoscu"], "-to", "2", "-aet", CALLING_AET, "-aec", RADTRIAGE_AET,
                            "127.0.0.1", str(port)], capture_output=True, timeout=30)
        if r.returncode == 0:
            return
        time.sleep(0.25)
    raise fail(f"no C-ECHO answer from radtriage on port {port} after {timeout:.0f} s\n{tail(logfile)}")


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), for "others" use."""
    with open("/proc/stat", encoding="ascii") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


class MemorySampler(threading.Thread):
    """Peak resident memory of the daemon and its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True, name="memory")
        self.pid, self.interval = pid, interval
        self.peak_mb = 0.0
        self.peak_processes = 0
        self.phase_peak: dict[str, float] = {}
        self.phase = "start"
        self._halt = threading.Event()

    def sample(self) -> float:
        pids = tree(self.pid)
        mb = sum(status_kb(p, "VmRSS") for p in pids) / 1024
        if mb > self.peak_mb:
            self.peak_mb, self.peak_processes = mb, len(pids)
        self.phase_peak[self.phase] = max(self.phase_peak.get(self.phase, 0.0), mb)
        return mb

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# -- the daemon's log -------------------------------------------------------------------------

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+)\s+(\S+) \[study=([^\]]*)\] (.*)$")
EVENTS = (  # (name, pattern on the message); the first of each per study is kept
    ("complete", re.compile(r"^study complete")),
    ("scored", re.compile(r"^(scored [\d.]+ over|not analysed)")),
    ("sr_sent", re.compile(r"^sr sent to", re.I)),
    ("summary_sent", re.compile(r"^summary sent to", re.I)),
)
STAGES = re.compile(r"(\w+) ([\d.]+) s")


def parse_log(path: Path, offset: float) -> tuple[dict[str, dict], list[str]]:
    """Study UID -> {event: monotonic time, "stages": {...}}; and the start-up lines."""
    studies: dict[str, dict] = {}
    startup: list[str] = []
    if not path.exists():
        return studies, startup
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        stamp, _level, name, study, msg = m.groups()
        if study == "-":
            if name == "daemon.service" and len(startup) < 12:
                startup.append(msg)
            continue
        t = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - offset
        ev = studies.setdefault(study, {})
        if msg.startswith("scored in "):
            ev.setdefault("stages", {k: float(v) for k, v in STAGES.findall(msg[len("scored in "):])})
            continue
        for event, pattern in EVENTS:
            if pattern.match(msg):
                ev.setdefault(event, t)
                break
    return studies, startup


# -- figures ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95),
            "max": max(values) if values else None,
            "mean": statistics.fmean(values) if values else None,
            "min": min(values) if values else None}


def fmt(v: float | None, unit: str = "s") -> str:
    return "-" if v is None else f"{v:.2f}{' ' + unit if unit else ''}"


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "?"


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=50, help="studies timed one at a time (default 50)")
    ap.add_argument("--senders", type=int, default=4,
                    help="concurrent storescu loops for the throughput part; 0 skips it (default 4)")
    ap.add_argument("--per-sender", type=int, default=15, help="studies each sender sends (default 15)")
    ap.add_argument("--size", type=int, default=2048, help="rows = columns of each view (default 2048)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write every figure as JSON")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 when the p95 latency is above {TARGET_P95_S:g} s or a study got "
                         "no SR in time")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, storage)")
    args = ap.parse_args(argv)
    if args.studies < 1 or args.senders < 0 or args.per_sender < 1 or args.size < 64:
        ap.error("--studies and --per-sender must be >= 1, --senders >= 0, --size >= 64")

    TOOL.update(dcmtk_tools())
    if not DEMO_MODEL.is_file():
        raise fail(f"{DEMO_MODEL} is missing: it is the default model this benchmark serves")
    exe = radtriage_exe()

    n_load = args.senders * args.per_sender
    studies = generate(1 + args.studies + n_load, args.size)
    warm, timed, load = studies[0], studies[1:1 + args.studies], studies[1 + args.studies:]
    work = Path(tempfile.mkdtemp(prefix="radtriage-e2e-"))
    machine = machine_info(work)
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        out = subprocess.run([TOOL["storescu"], "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        machine["dcmtk"] = out.strip().splitlines()[0].strip("$ ").replace("dcmtk: ", "")
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        machine["torch"] = importlib.metadata.version("torch")
    machine["commit"] = git_describe()
    offset = time.time() - time.monotonic()

    pacs = Pacs(work / "pacs", free_port())
    port = free_port()
    cfg_path = work / "config.yaml"
    write_config(cfg_path, port=port, work=work, pacs_port=pacs.port)
    eff = settings(cfg_path)
    daemon_log = work / "radtriage.log"
    proc: subprocess.Popen | None = None
    sampler: MemorySampler | None = None
    rc: int | None = None
    result: dict = {}
    try:
        pacs.start()
        with daemon_log.open("wb") as err:
            proc = subprocess.Popen([exe, "serve", "--config", str(cfg_path)], cwd=work,
                                    env=clean_env(), stdout=err, stderr=subprocess.STDOUT)
        sampler = MemorySampler(proc.pid)
        sampler.start()
        t0 = time.monotonic()
        wait_for_echo(port, proc, daemon_log, 600)
        started_s = time.monotonic() - t0
        _, startup = parse_log(daemon_log, offset)
        log(f"radtriage answers C-ECHO after {started_s:.1f} s")

        # warm-up: the first study (not counted); learn how many objects a study gets
        sampler.phase = "warm-up"
        w = send(warm, port, CALLING_AET)
        if not w.ok:
            raise fail(f"storescu failed on the warm-up study (exit {w.rc}):\n{w.output}")
        sr = pacs.wait(warm.uid, time.monotonic() + 600)
        if sr is None:
            raise fail(f"no SR for the warm-up study within 600 s\n{tail(daemon_log)}")
        time.sleep(3)
        products = len(pacs.of(warm.uid))
        log(f"warm-up: SR after {sr.t - w.last_sending:.2f} s; {products} object(s) per study "
            f"({', '.join(sorted(a.modality for a in pacs.of(warm.uid)))})")

        # latency: one study at a time
        sampler.phase = "latency"
        cpu0, busy0, tl0 = cpu_s(tree(proc.pid)), machine_busy_s(), time.monotonic()
        lat_rows = []
        for k, st in enumerate(timed):
            r = send(st, port, CALLING_AET)
            if not r.ok:
                raise fail(f"storescu failed on study {st.index} (exit {r.rc}, {r.successes}/"
                           f"{r.instances} Success):\n{r.output}")
            assert r.last_sending is not None
            if proc.poll() is not None:
                raise fail(f"radtriage exited with {proc.returncode}\n{tail(daemon_log)}")
            sr = pacs.wait(st.uid, r.last_sending + SR_TIMEOUT_S, products)
            got = pacs.of(st.uid)
            row = {"study": st.index, "uid": st.uid, "views": len(st.files), "type": st.study_type,
                   "abnormal_truth": st.abnormal, "sent": r.last_sending,
                   "response_after_s": (r.last_response or r.last_sending) - r.last_sending,
                   "exit_after_s": r.exit - r.last_sending,
                   "sr_s": sr.t - r.last_sending if sr else None,
                   "last_product_s": max(a.t for a in got) - r.last_sending if got and sr else None,
                   "objects": len(got), "verdict": sr.series_description if sr else ""}
            lat_rows.append(row)
            log(f"  {k + 1}/{len(timed)}: {len(st.files)} views, SR after "
                f"{fmt(row['sr_s'])}, last product {fmt(row['last_product_s'])}")
        lat_cpu, lat_busy = cpu_s(tree(proc.pid)) - cpu0, machine_busy_s() - busy0
        lat_wall = time.monotonic() - tl0

        # throughput: concurrent storescu loops
        thr: dict = {}
        if load:
            sampler.phase = "throughput"
            log(f"throughput: {args.senders} senders x {args.per_sender} studies")
            sent: list[Sent] = []
            lock = threading.Lock()

            def loop(mine: list[Study], calling: str) -> None:
                for st in mine:
                    r = send(st, port, calling)
                    with lock:
                        sent.append(r)

            cpu0, busy0 = cpu_s(tree(proc.pid)), machine_busy_s()
            first = time.monotonic()
            threads = [threading.Thread(target=loop, args=(load[i::args.senders], f"E2E{i + 1}"))
                       for i in range(args.senders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sent_done = time.monotonic()
            bad = [r for r in sent if not r.ok]
            # wait for every SR; give up when none has come for SR_TIMEOUT_S x 2
            last_progress, seen = time.monotonic(), 0
            while True:
                n = sum(pacs.sr(st.uid) is not None for st in load)
                if n == len(load):
                    break
                if n > seen:
                    seen, last_progress = n, time.monotonic()
                if time.monotonic() - last_progress > 2 * SR_TIMEOUT_S:
                    break
                time.sleep(0.25)
            thr_cpu, thr_busy = cpu_s(tree(proc.pid)) - cpu0, machine_busy_s() - busy0
            srs = {st.uid: pacs.sr(st.uid) for st in load}
            arrived = [a for a in srs.values() if a is not None]
            by_index = {r.study: r for r in sent}
            load_lat = [srs[st.uid].t - by_index[st.index].last_sending for st in load
                        if srs[st.uid] is not None and by_index[st.index].last_sending is not None]
            last_sr = max((a.t for a in arrived), default=sent_done)
            wall = last_sr - first
            thr = {"senders": args.senders, "per_sender": args.per_sender, "studies": len(load),
                   "sent_ok": len(sent) - len(bad), "send_failures": len(bad),
                   "sr_arrived": len(arrived), "sending_s": sent_done - first, "wall_s": wall,
                   "studies_per_min": len(arrived) / wall * 60 if wall > 0 else None,
                   "latency_under_load": summary(load_lat), "daemon_cpu_s": thr_cpu,
                   "machine_busy_s": thr_busy, "measured_s": time.monotonic() - first}
            log(f"throughput: {len(arrived)}/{len(load)} SRs in {wall:.1f} s "
                f"(sending took {sent_done - first:.1f} s)")
        sampler.phase = "end"
        sampler.sample()
        own_hwm = status_kb(proc.pid, "VmHWM") / 1024
        workers = len(tree(proc.pid)) - 1
        events, _ = parse_log(daemon_log, offset)
        result = {"lat_rows": lat_rows, "lat_cpu": lat_cpu, "lat_busy": lat_busy,
                  "lat_wall": lat_wall, "thr": thr, "load_end": os.getloadavg()[0],
                  "own_hwm": own_hwm, "workers": workers, "events": events, "startup": startup,
                  "started_s": started_s, "products": products}
    finally:
        if sampler is not None:
            sampler.stop()
        if proc is not None:
            rc = stop(proc, timeout=120)
        pacs.stop()
        if rc not in (None, 0):
            log(f"radtriage exited with {rc} after SIGTERM\n{tail(daemon_log)}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report(args, result, eff, machine, sampler, rc, pacs)


def report(args: argparse.Namespace, res: dict, eff: dict, machine: dict, sampler: "MemorySampler",
           rc: int | None, pacs: Pacs) -> int:
    rows = res["lat_rows"]
    ok_rows = [r for r in rows if r["sr_s"] is not None]
    failures = len(rows) - len(ok_rows)
    lat = summary([r["sr_s"] for r in ok_rows])
    last = summary([r["last_product_s"] for r in ok_rows if r["last_product_s"] is not None])
    # a study without an SR counts as infinitely late for the percentiles
    p95_all = pct([r["sr_s"] if r["sr_s"] is not None else float("inf") for r in rows], 95)
    passed = failures == 0 and p95_all is not None and p95_all <= TARGET_P95_S

    # where the time goes, from the daemon's own log (same clock)
    phases: dict[str, list[float]] = {k: [] for k in
                                      ("complete", "scored", "sr_sent", "sr_arrival")}
    stages: dict[str, list[float]] = {}
    for r in rows:
        ev = res["events"].get(r["uid"], {})
        r["daemon_log"] = {k: (v - r["sent"] if isinstance(v, float) else v) for k, v in ev.items()}
    for r in ok_rows:
        ev = res["events"].get(r["uid"], {})
        marks = [("complete", r["sent"]), ("scored", ev.get("complete")), ("sr_sent", ev.get("scored"))]
        for name, since in marks:
            if ev.get(name) is not None and since is not None:
                phases[name].append(ev[name] - since)
        if ev.get("sr_sent") is not None:
            phases["sr_arrival"].append(r["sent"] + r["sr_s"] - ev["sr_sent"])
        for k, v in ev.get("stages", {}).items():
            stages.setdefault(k, []).append(v)

    print(f"machine:   {machine['uname']}, {machine['cpu_count']} CPUs ({machine['cpu_model']}), "
          f"{machine['memory_gib']} GiB RAM, load average {machine['load_average_1m']} at start")
    print(f"software:  {machine['dcmtk']}; Python {machine['python']}, torch {machine.get('torch', '?')}, "
          f"pynetdicom {machine['pynetdicom']}, pydicom {machine['pydicom']}; code {machine['commit']}")
    print("radtriage: embedded defaults except node.port, storage, database, model.checkpoint "
          "(the default file, absolute) and one DICOM destination (storescp)")
    for line in res["startup"]:
        if line.startswith(("model ", "preprocessing", "radtriage is running")):
            print(f"           log: {line}")
    sections: dict[str, list[str]] = {}
    for k, v in eff.items():
        section, _, key = k.partition(".")
        sections.setdefault(section, []).append(f"{key} {v}")
    for n, (section, items) in enumerate(sections.items()):
        print(f"{'settings:' if n == 0 else '':<11}{section}: {', '.join(items)}")
    print(f"           {res['workers']} child process(es) of the daemon at the end; C-ECHO "
          f"answered {res['started_s']:.1f} s after start; load average {res['load_end']:.2f} at the end")
    views = [r["views"] for r in rows]
    print(f"data:      {len(rows)} timed CR studies of {min(views)}-{max(views)} views "
          f"({sum(views)} in all), {args.size}x{args.size}, 16 bits allocated, 12 stored, "
          f"MONOCHROME2 (training.phantoms content); {res['products']} object(s) back per study")
    print(f"sender:    storescu -v (TCP_NODELAY=1), one study per association; latency starts at "
          f"its last 'Sending Store Request' line (last Store Response {fmt(pct([r['response_after_s'] for r in rows], 50))} "
          f"later, exit {fmt(pct([r['exit_after_s'] for r in rows], 50))} later, medians)")
    print()
    print(f"{'latency, one study at a time':<44} {'n':>3} {'p50':>7} {'p95':>7} {'max':>7} {'mean':>7}")
    for label, s in (("last instance sent -> SR at the PACS", lat),
                     ("last instance sent -> last product", last)):
        print(f"{label:<44} {s['n']:>3} {fmt(s['p50'], ''):>7} {fmt(s['p95'], ''):>7} "
              f"{fmt(s['max'], ''):>7} {fmt(s['mean'], ''):>7}")
    print(f"failures (no SR within {SR_TIMEOUT_S:.0f} s): {failures}")
    print()
    print("where the latency goes (daemon log, medians / p95 over the timed studies):")
    labels = {"complete": "sent -> 'study complete'", "scored": "complete -> 'scored'",
              "sr_sent": "scored -> 'sr sent'", "sr_arrival": "SR at PACS - 'sr sent' log"}
    for k, v in phases.items():
        print(f"  {labels[k]:<32} {fmt(pct(v, 50)):>9} {fmt(pct(v, 95)):>9}   (n {len(v)})")
    if stages:
        print("  the daemon's 'scored in' stages: " + ", ".join(
            f"{k} {pct(v, 50):.2f} / {pct(v, 95):.2f} s" for k, v in stages.items()))
    verdicts: dict[str, int] = {}
    for r in ok_rows:
        m = re.search(r"PRIORITY (\w+)", r["verdict"])
        verdicts[m.group(1) if m else (r["verdict"] or "?")] = verdicts.get(
            m.group(1) if m else (r["verdict"] or "?"), 0) + 1
    print(f"  SR verdicts: {', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))} "
          f"({sum(r['abnormal_truth'] for r in rows)} of {len(rows)} studies have phantom findings)")
    cores = machine["cpu_count"] or 1
    # CPU % of everything but the daemon, per part, and the most that is still a quiet machine
    # (storescu and storescp take a few %, more with concurrent senders)
    lat_others = 100 * (res["lat_busy"] - res["lat_cpu"]) / res["lat_wall"]
    print(f"  CPU during the latency part ({res['lat_wall']:.0f} s): daemon "
          f"{100 * res['lat_cpu'] / res['lat_wall']:.0f} %, everything else (storescu, storescp, "
          f"this script, other work) {lat_others:.0f} %, of {100 * cores} %")
    busy_others = [("latency", lat_others, 20)]
    thr = res["thr"]
    if thr:
        print()
        ll = thr["latency_under_load"]
        thr_others = 100 * (thr["machine_busy_s"] - thr["daemon_cpu_s"]) / thr["measured_s"]
        print(f"throughput: {thr['senders']} concurrent senders x {thr['per_sender']} studies: "
              f"{thr['sr_arrived']}/{thr['studies']} SRs in {thr['wall_s']:.1f} s = "
              f"{fmt(thr['studies_per_min'], 'studies/min')} (all sent in {thr['sending_s']:.1f} s; "
              f"{thr['send_failures']} send failure(s)); latency under load p50 {fmt(ll['p50'])}, "
              f"p95 {fmt(ll['p95'])}, max {fmt(ll['max'])}")
        print(f"            CPU: daemon {100 * thr['daemon_cpu_s'] / thr['measured_s']:.0f} %, "
              f"everything else {thr_others:.0f} %, of {100 * cores} %")
        busy_others.append(("throughput", thr_others, 40))
    noisy = [f"{part} {pc:.0f} %" for part, pc, quiet in busy_others if pc >= quiet]
    if noisy:
        print(f"WARNING: processes other than the daemon used {', '.join(noisy)} CPU: these are not "
              "the figures of a quiet machine")
    print()
    print(f"memory:    peak resident (daemon + children, sampled every 0.25 s) "
          f"{sampler.peak_mb:.0f} MB over {sampler.peak_processes} process(es); daemon's own "
          f"VmHWM {res['own_hwm']:.0f} MB; per part: "
          + ", ".join(f"{k} {v:.0f} MB" for k, v in sampler.phase_peak.items() if k != "end"))
    if pacs.unreadable:
        print(f"PACS: {len(pacs.unreadable)} received file(s) could not be read: {pacs.unreadable[:3]}")
    print(f"radtriage exit status after SIGTERM: {rc}")
    print(f"verdict:   p95 {fmt(p95_all)} (target <= {TARGET_P95_S:g} s), {failures} failure(s): "
          f"{'PASS' if passed else 'FAIL'}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "settings": eff, "startup_log": res["startup"],
            "params": {"studies": args.studies, "senders": args.senders,
                       "per_sender": args.per_sender, "size": args.size,
                       "target_p95_s": TARGET_P95_S, "sr_timeout_s": SR_TIMEOUT_S,
                       "latency_start": "storescu's last 'Sending Store Request' log line"},
            "latency": {"sr": lat, "last_product": last, "failures": failures, "p95_with_failures": p95_all,
                        "studies": [{k: v for k, v in r.items() if k != "sent"} for r in rows]},
            "breakdown": {k: summary(v) for k, v in phases.items()},
            "stages": {k: summary(v) for k, v in stages.items()},
            "throughput": thr,
            "memory": {"peak_mb": sampler.peak_mb, "peak_processes": sampler.peak_processes,
                       "daemon_vmhwm_mb": res["own_hwm"], "phase_peak_mb": sampler.phase_peak},
            "exit_code": rc, "verdict": "PASS" if passed else "FAIL",
        }, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    if rc != 0:
        return 1
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
