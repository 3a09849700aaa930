"""``python -m bench``: the service's hot paths beside a reference handler, on this machine.

Every phase runs for a fixed time on loopback, against throwaway databases (Postgres databases
and SQLite files) that are removed at the end, with every server it started stopped, whatever
happens. Absolute numbers drift on a shared machine, even between two phases of one run. The
main ones compare the service with ``bench/reference.py`` (the minimal handlers anyone would
write, on the same schema) under the same requests, both servers up at once and measured in
alternating rounds (service, reference, reference, service, ...), so that drift lands on both
sides alike; a bare Starlette app (the HTTP ceiling) and ``pgbench`` (the database ceiling) are
measured too, as context.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.console import console
from bench.report import markdown, ratio, round_ratios, verdicts
from bench.seed import seed_connections, seed_sqlite_connections, users_for

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SIGNING_KEY = "5f3c0f0e-9a4b-4b8e-9d7c-2a1b3c4d5e6f"
API_KEY = "bench-full-access-key-0123456789abcdef"
BEARER = f"Bearer {API_KEY}"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# The pause after each round, so that what one server still has in flight when wrk stops does
# not run during the next round of the other.
SETTLE_SECONDS = 0.5

# Phases that --skip and --only name; "reference" (for --skip) leaves out the reference runs.
PHASES = (
    "http",
    "db",
    "ingest",
    "lookup",
    "getbyid",
    "summary",
    "scale",
    "sqlite",
    "reconcile",
    "console",
)
# The lookup routes measured on the service and on the reference: label, request line.
ROUTES = {
    "lookup": ("list by end user", "GET /v1/connections?end_user_id=user-{i}&limit=50"),
    "getbyid": ("get one connection by ID", "GET /v1/connections/seed-{i}"),
    "summary": ("end-user summary", "GET /v1/end-users/user-{i}/summary"),
}


class BenchError(RuntimeError):
    """A phase could not run; the message says why and what to do."""


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Options:
    duration: int
    rounds: int
    connections: int
    threads: int
    bodies: int
    workers: list[int]
    lookup_sizes: list[int]
    main_lookup_size: int
    reconcile_sizes: list[int]
    admin_url: str
    log_level: str
    pool_size: int | None
    profile: bool
    console_size: int = 1_000_000
    console_requests: int = 20
    phases: set[str] = field(default_factory=lambda: set(PHASES))
    reference: bool = True

    def runs(self, phase: str) -> bool:
        return phase in self.phases

    @property
    def kinds(self) -> list[str]:
        """The servers each comparison measures, in this order."""
        return ["service", "reference"] if self.reference else ["service"]

    @property
    def round_seconds(self) -> int:
        """The length of one round: ``duration`` seconds per server, cut in ``rounds``."""
        return max(1, round(self.duration / self.rounds))


# Processes and databases ------------------------------------------------------------------


class Harness:
    """Owns everything a run creates, and removes all of it in ``close``."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.workdir = Path(tempfile.mkdtemp(prefix="nango-registry-bench-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.databases: list[str] = []
        self.run_id = f"{os.getpid()}_{int(time.time())}"

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        for name in reversed(self.databases):
            with contextlib.suppress(psycopg.Error):
                self.drop_database(name)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # Databases

    def conninfo(self, name: str) -> str:
        base, _, _ = self.options.admin_url.rpartition("/")
        return f"{base}/{name}"

    def create_database(self, purpose: str) -> str:
        name = f"nango_registry_bench_{self.run_id}_{purpose}"
        with psycopg.connect(self.options.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        migrate(self.conninfo(name))
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.options.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if name in self.databases:
            self.databases.remove(name)

    @contextlib.contextmanager
    def database(self, purpose: str, *, sqlite: bool = False) -> Iterator[Database]:
        """A migrated database for one phase (a SQLite file in the work directory), removed
        after it."""
        if not sqlite:
            name = self.create_database(purpose)
            try:
                yield Database(url=self.conninfo(name))
            finally:
                self.drop_database(name)
            return
        path = self.workdir / f"{purpose}.db"
        database = Database(url=f"sqlite:///{path}", path=path)
        try:
            migrate(database.url)
            yield database
        finally:
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)

    # Servers

    def start(self, command: list[str], *, env: dict[str, str], log_name: str) -> Server:
        port = free_port()
        log_path = self.workdir / f"{log_name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*command, "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        server = Server(process=process, port=port, log=log_path)
        server.wait_ready()
        return server

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if process in self.processes:
            self.processes.remove(process)

    @contextlib.contextmanager
    def server(self, command: list[str], *, env: dict[str, str], log_name: str) -> Iterator[Server]:
        server = self.start(command, env=env, log_name=log_name)
        try:
            yield server
        finally:
            self.stop(server.process)

    @contextlib.contextmanager
    def serve(
        self, kind: str, database: Database, *, workers: int, log_name: str
    ) -> Iterator[Server]:
        """The service (``nango-registry serve``) or the reference app on ``database``."""
        env = self.app_env(database.url, workers=workers)
        if kind == "service":
            command = app_command(workers)
        else:
            command = [sys.executable, "-m", "bench.reference", "--workers", str(workers)]
            command += ["--database-url", database.url]
        with self.server(command, env=env, log_name=f"{log_name}-{kind}") as server:
            if kind == "service":
                # Opens the pool's first connection before the clock starts.
                http_get(f"{server.url}/readyz")
            yield server

    def app_env(self, database_url: str, *, workers: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": database_url,
                "NANGO_WEBHOOK_SIGNING_KEYS": SIGNING_KEY,
                "REGISTRY_API_KEYS": API_KEY,
                "SECRET_KEY": "bench-secret-key",
                "HOST": "127.0.0.1",
                "WEB_CONCURRENCY": str(workers),
                "LOG_LEVEL": self.options.log_level,
            }
        )
        if self.options.pool_size is not None:
            env["DATABASE_POOL_SIZE"] = str(self.options.pool_size)
        return env


def migrate(url: str) -> None:
    from app.db.migrate import upgrade
    from app.settings import normalise_database_url

    upgrade(normalise_database_url(url))


@dataclass(frozen=True)
class Database:
    """A database as the servers are given it: ``postgresql://...`` or ``sqlite:////path``."""

    url: str
    path: Path | None = None  # SQLite only

    def connect(self) -> contextlib.AbstractContextManager[Any]:
        """A DB-API connection (psycopg or sqlite3), closed when the block ends."""
        if self.path is not None:
            return contextlib.closing(sqlite3.connect(self.path))
        return psycopg.connect(self.url)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise BenchError(f"the server exited with {self.process.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                if http_get(f"{self.url}/healthz")[0] == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"the server did not answer /healthz within {timeout:.0f}s")

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes: the server itself, or its children with workers > 1."""
        children_file = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        children = [int(pid) for pid in children_file.read_text().split()]
        workers = [pid for pid in children if "resource_tracker" not in cmdline(pid)]
        return workers or [self.process.pid]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used (robust to other load on the machine)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (loopback URL)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# Load generators ----------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def run_wrk(
    options: Options,
    *,
    url: str,
    requests_file: Path,
    auth: str | None = None,
    acked_file: Path | None = None,
    path: str | None = None,
    seconds: int | None = None,
    latency_file: Path | None = None,
) -> dict[str, Any]:
    """wrk for ``seconds`` (default ``--duration``) replaying ``requests_file``."""
    seconds = seconds or options.duration
    wrk = find_tool("wrk")
    if wrk is None:
        raise BenchError("wrk is missing: apt-get install -y wrk")
    env = dict(os.environ)
    env.update({"BENCH_REQUESTS": str(requests_file), "BENCH_THREADS": str(options.threads)})
    if auth:
        env["BENCH_AUTH"] = auth
    if acked_file:
        env["BENCH_ACKED"] = str(acked_file)
    if path:
        env["BENCH_PATH"] = path
    if latency_file:
        env["BENCH_LATENCY"] = str(latency_file)
    command = [
        wrk,
        f"-t{options.threads}",
        f"-c{options.connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "replay.lua"),
        url,
    ]
    finished = subprocess.run(
        command, env=env, capture_output=True, timeout=seconds + 120, check=False
    )
    output = finished.stdout.decode(errors="replace")
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            raw = json.loads(line.removeprefix("BENCH_RESULT "))
            return summarize_wrk(raw)
    raise BenchError(f"wrk printed no result:\n{output}\n{finished.stderr.decode()[-2000:]}")


def run_wrk_on(server: Server, options: Options, **arguments: Any) -> dict[str, Any]:
    """``run_wrk`` plus the CPU the server's workers spent per answered request."""
    pids = server.worker_pids()
    before = cpu_seconds(pids)
    result = run_wrk(options, **arguments)
    spent = cpu_seconds(pids) - before
    result["cpu_seconds"] = round(spent, 2)
    result["cpu_ms_per_request"] = round(spent * 1000 / max(1, result["ok"]), 3)
    return result


def summarize_wrk(raw: dict[str, Any]) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "rps": round(raw["ok"] / seconds, 1),
        "ok": raw["ok"],
        "failed": raw["failed"],
        "statuses": raw["statuses"],
        "socket_errors": raw["errors"],
        "duplicates": raw["duplicates"],
        "wrapped": raw["wrapped"],
        "p50_ms": round(latency["p50"] / 1000, 2),
        "p90_ms": round(latency["p90"] / 1000, 2),
        "p99_ms": round(latency["p99"] / 1000, 2),
        "max_ms": round(latency["max"] / 1000, 2),
    }


def run_pgbench(options: Options, harness: Harness, database: Database) -> dict[str, Any]:
    pgbench = find_tool("pgbench")
    if pgbench is None:
        raise BenchError("pgbench is missing: apt-get install -y postgresql-client")
    prefix = harness.workdir / "pgbench"
    command = [
        pgbench,
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={options.connections}",
        "--jobs=2",
        f"--time={options.duration}",
        f"--file={BENCH / 'ingest.pgbench.sql'}",
        "--log",
        f"--log-prefix={prefix}",
        database.url,
    ]
    finished = subprocess.run(
        command,
        cwd=harness.workdir,
        capture_output=True,
        timeout=options.duration + 120,
        check=False,
    )
    output = finished.stdout.decode(errors="replace") + finished.stderr.decode(errors="replace")
    if finished.returncode != 0:
        raise BenchError(f"pgbench failed:\n{output[-3000:]}")
    latencies: list[int] = []
    for log_file in harness.workdir.glob("pgbench.*"):
        for line in log_file.read_text().splitlines():
            latencies.append(int(line.split()[2]))
        log_file.unlink()
    tps = next(
        float(line.split("=")[1].split()[0])
        for line in output.splitlines()
        if line.startswith("tps =")
    )
    return {
        "transactions": len(latencies),
        "rps": round(tps, 1),
        **percentiles_ms(latencies),
    }


def percentiles_ms(latencies_us: list[int]) -> dict[str, float]:
    if not latencies_us:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    cuts = statistics.quantiles(latencies_us, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] / 1000, 2), "p99_ms": round(cuts[98] / 1000, 2)}


# Request files ----------------------------------------------------------------------------


def write_webhooks(path: Path, count: int, *, run_tag: str) -> set[str]:
    """Distinct signed auth creations, one a line; returns their dedupe keys (body SHA-256)."""
    integrations = ("github", "slack", "hubspot", "salesforce")
    keys: set[str] = set()
    key = SIGNING_KEY.encode()
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            user = index // 3
            integration = integrations[index % len(integrations)]
            payload = {
                "authMode": "OAUTH2",
                "connectionId": f"bench-{run_tag}-{index:07d}",
                "environment": "prod",
                "from": "nango",
                "operation": "creation",
                "provider": integration,
                "providerConfigKey": integration,
                "success": True,
                "tags": {
                    "end_user_email": f"user-{user}@example.com",
                    "end_user_id": f"user-{user}",
                    "organization_id": f"org-{user // 10}",
                },
                "type": "auth",
            }
            # Serialised like Nango: compact, sorted keys, UTF-8 unescaped.
            body = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
            raw = body.encode()
            signature = hmac.new(key, raw, hashlib.sha256).hexdigest()
            keys.add(hashlib.sha256(raw).hexdigest())
            out.write(f"POST /webhooks/nango {signature} {body}\n")
    return keys


def write_slices(webhooks: Path, count: int) -> list[Path]:
    """``webhooks`` cut into ``count`` files of consecutive lines, one per round: each round of
    a server sends bodies no round of that server sent before."""
    lines = webhooks.read_text(encoding="utf-8").splitlines(keepends=True)
    paths = []
    for index in range(count):
        path = webhooks.with_name(f"{webhooks.stem}-{index}.txt")
        part = lines[index * len(lines) // count : (index + 1) * len(lines) // count]
        path.write_text("".join(part), encoding="utf-8")
        paths.append(path)
    return paths


def write_requests(path: Path, line: str, *, population: int, count: int = 50_000) -> Path:
    """``count`` request lines, ``{i}`` in ``line`` drawn at random below ``population``."""
    chooser = random.Random(7)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            out.write(line.format(i=chooser.randrange(population)) + "\n")
    return path


# Phases -------------------------------------------------------------------------------------


def app_command(workers: int) -> list[str]:
    return [sys.executable, "-m", "app.cli", "serve", "--workers", str(workers)]


def http_ceiling(options: Options, harness: Harness, webhooks: Path) -> dict[str, Any]:
    env = dict(os.environ)
    command = [sys.executable, "-m", "bench.bare", "--workers", "1"]
    with harness.server(command, env=env, log_name="bare") as server:
        say("HTTP ceiling: bare Starlette, GET")
        read = run_wrk_on(server, options, url=server.url, requests_file=write_bare_get(harness))
        say(f"  {read['rps']} req/s, p99 {read['p99_ms']} ms, {read['cpu_ms_per_request']} ms CPU")
        say("HTTP ceiling: bare Starlette, POST of the same webhook bodies")
        write = run_wrk_on(server, options, url=server.url, requests_file=webhooks, path="/")
        say(
            f"  {write['rps']} req/s, p99 {write['p99_ms']} ms,"
            f" {write['cpu_ms_per_request']} ms CPU"
        )
    return {"get": read, "post": write}


def write_bare_get(harness: Harness) -> Path:
    path = harness.workdir / "bare-get.txt"
    path.write_text("GET /\n")
    return path


def db_ceiling(options: Options, harness: Harness) -> dict[str, Any]:
    with harness.database("pgbench") as database:
        say(f"DB ceiling: pgbench, the receiver's transaction, {options.connections} clients")
        result = run_pgbench(options, harness, database)
        say(f"  {result['rps']} tx/s, p99 {result['p99_ms']} ms")
        return result


@dataclass
class Side:
    """One server of a comparison: the request file of each round and, for ingest, the file
    each round writes its acknowledged delivery IDs to."""

    kind: str
    server: Server
    requests: list[Path]
    acked: list[Path] | None = None


def interleave(
    options: Options,
    harness: Harness,
    name: str,
    sides: list[Side],
    *,
    path: str = "",
    auth: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``--rounds`` wrk runs on every side, alternating so that neither always goes first
    (service, reference, reference, service, service, ...): drift of the machine's speed during
    the comparison lands on both sides. Returns each side's rounds combined (``combine``)."""
    seconds = options.round_seconds
    kinds = ", ".join(side.kind for side in sides)
    say(
        f"{name}: {options.rounds} rounds of {seconds}s each on {kinds},"
        f" {options.connections} connections"
    )
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    rounds: dict[str, list[dict[str, Any]]] = {side.kind: [] for side in sides}
    histograms: dict[str, Counter[int]] = {side.kind: Counter() for side in sides}
    profiled = min(1, options.rounds - 1)  # a warm round
    for index in range(options.rounds):
        for side in sides if index % 2 == 0 else sides[::-1]:
            latency_file = harness.workdir / f"latency-{slug}-{side.kind}-{index}.txt"
            profile = (
                profiling(options, side.server, f"{slug}-{side.kind}", seconds)
                if index == profiled
                else contextlib.nullcontext()
            )
            with profile:
                result = run_wrk_on(
                    side.server,
                    options,
                    url=f"{side.server.url}{path}",
                    requests_file=side.requests[index],
                    acked_file=side.acked[index] if side.acked else None,
                    auth=auth,
                    seconds=seconds,
                    latency_file=latency_file,
                )
            histograms[side.kind].update(read_histogram(latency_file))
            rounds[side.kind].append(result)
            say(
                f"  round {index + 1} {side.kind}: {result['rps']} req/s,"
                f" p99 {result['p99_ms']} ms, non-2xx {result['failed']},"
                f" {result['cpu_ms_per_request']} ms CPU/request"
            )
            # What wrk left in flight at its deadline finishes before the other side starts.
            time.sleep(SETTLE_SECONDS)
    combined = {kind: combine(rounds[kind], histograms[kind]) for kind in rounds}
    for kind, result in combined.items():
        say(
            f"  {kind}, all rounds: {result['rps']} req/s, p50 {result['p50_ms']} ms,"
            f" p99 {result['p99_ms']} ms, {result['cpu_ms_per_request']} ms CPU/request"
        )
    return combined


def read_histogram(path: Path) -> Counter[int]:
    """The ``microseconds count`` lines replay.lua writes (BENCH_LATENCY); the file goes."""
    histogram: Counter[int] = Counter()
    for line in path.read_text().splitlines():
        value, count = line.split()
        histogram[int(value)] += int(count)
    path.unlink()
    return histogram


def histogram_percentile(histogram: Counter[int], percent: float) -> float:
    """The latency (ms) below which ``percent`` of the requests fall, computed like wrk's."""
    total = sum(histogram.values())
    rank = round(percent / 100 * total + 0.5)
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return round(value / 1000, 2)
    return 0.0


def combine(rounds: list[dict[str, Any]], histogram: Counter[int]) -> dict[str, Any]:
    """One side's rounds as one measurement: req/s is all answered requests over all the
    rounds' seconds, CPU all CPU over them, percentiles from the rounds' latencies merged."""
    total: dict[str, Any] = {
        key: sum(result[key] for result in rounds)
        for key in ("requests", "ok", "failed", "duplicates", "wrapped")
    }
    seconds = sum(result["seconds"] for result in rounds)
    cpu = sum(result["cpu_seconds"] for result in rounds)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for result in rounds:
        statuses.update(result["statuses"])
        errors.update(result["socket_errors"])
    return {
        **total,
        "seconds": round(seconds, 2),
        "rps": round(total["ok"] / seconds, 1) if seconds else 0.0,
        "statuses": dict(statuses),
        "socket_errors": dict(errors),
        "p50_ms": histogram_percentile(histogram, 50),
        "p90_ms": histogram_percentile(histogram, 90),
        "p99_ms": histogram_percentile(histogram, 99),
        "max_ms": max(result["max_ms"] for result in rounds),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_request": round(cpu * 1000 / max(1, total["ok"]), 3),
        "rounds": rounds,
    }


def ingest_pair(
    options: Options,
    harness: Harness,
    slices: list[Path],
    keys: set[str],
    *,
    workers: int,
    sqlite: bool = False,
) -> dict[str, Any]:
    """The signed webhooks against the service and the reference, each on a fresh database of
    its own, in alternating rounds; round *i* of each sends slice *i* of the bodies (so no
    server gets a body twice), then the stored-once check over all of a server's rounds."""
    backend = "SQLite" if sqlite else "Postgres"
    label = f"{backend} webhook ingest, {workers} worker{'s' if workers > 1 else ''}"
    purpose = f"ingest_{backend.lower()}_{workers}w"
    acked = {
        kind: [
            harness.workdir / f"acked-{purpose}-{kind}-{index}.txt" for index in range(len(slices))
        ]
        for kind in options.kinds
    }
    with contextlib.ExitStack() as databases:
        database = {
            kind: databases.enter_context(harness.database(f"{purpose}_{kind}", sqlite=sqlite))
            for kind in options.kinds
        }
        with contextlib.ExitStack() as servers:
            sides = [
                Side(
                    kind,
                    servers.enter_context(
                        harness.serve(kind, database[kind], workers=workers, log_name=purpose)
                    ),
                    requests=slices,
                    acked=acked[kind],
                )
                for kind in options.kinds
            ]
            name = f"{backend} ingest, {workers} worker(s)"
            results = interleave(options, harness, name, sides, path="/webhooks/nango")
            time.sleep(1)  # requests wrk gave up on at the deadline may still commit
            for side in sides:
                pids = side.server.worker_pids()
                results[side.kind]["rss_mb"] = [round(rss_mb(pid), 1) for pid in pids]
        for kind, result in results.items():
            result["correctness"] = check_stored_once(database[kind], acked[kind], keys)
            say(f"  {kind}: RSS {result['rss_mb']} MB; {result['correctness']['verdict']}")
            if result["wrapped"]:
                say(f"  WARNING: wrk ran out of distinct bodies for the {kind}; raise --bodies")
    return {"label": label, **results}


def check_stored_once(
    database: Database, acked_files: list[Path], keys: set[str]
) -> dict[str, Any]:
    """Every delivery acknowledged in any round is stored, once, and applied once."""
    acked = [int(line) for path in acked_files for line in path.read_text().split()]
    with database.connect() as conn:
        stored = dict(conn.execute("SELECT id, dedupe_key FROM deliveries").fetchall())
        events = conn.execute(
            "SELECT delivery_id, count(*) FROM connection_events GROUP BY delivery_id"
        ).fetchall()
        outcomes = dict(
            conn.execute("SELECT outcome, count(*) FROM deliveries GROUP BY outcome").fetchall()
        )
        connections = conn.execute("SELECT count(*) FROM connections").fetchone()
    missing = sorted(set(acked) - set(stored))
    acked_twice = len(acked) - len(set(acked))
    stored_keys = list(stored.values())
    duplicate_keys = len(stored_keys) - len(set(stored_keys))
    unknown_keys = sum(1 for key in stored_keys if key not in keys)
    applied_twice = sum(1 for _, count in events if count != 1)
    unapplied = len(stored) - len(events)
    problems = {
        "acknowledged_not_stored": len(missing),
        "acknowledged_twice": acked_twice,
        "duplicate_dedupe_keys": duplicate_keys,
        "unknown_bodies": unknown_keys,
        "applied_more_than_once": applied_twice,
        "not_applied": unapplied,
    }
    ok = not any(problems.values())
    return {
        "acknowledged": len(acked),
        "stored": len(stored),
        "stored_not_acknowledged": len(stored) - len(set(acked) & set(stored)),
        "connections": connections[0] if connections else 0,
        "outcomes": outcomes,
        **problems,
        "verdict": "every acknowledged delivery stored once" if ok else f"FAILED {problems}",
        "ok": ok,
    }


def lookups(options: Options, harness: Harness, comparisons: dict[str, Any]) -> dict[str, Any]:
    """Postgres lookups on one database, seeded in steps: at every ``--lookup-sizes`` the
    service lists by end user (the scale check); at the main size each lookup route runs on
    the service and on the reference, in alternating rounds (``comparisons``)."""
    main_size = options.main_lookup_size
    routes = [route for route in ROUTES if options.runs(route)]
    sizes = set(options.lookup_sizes) if options.runs("scale") else set()
    sizes |= {main_size} if routes else set()
    scale: dict[str, Any] = {}
    with (
        harness.database("lookup") as database,
        harness.serve("service", database, workers=1, log_name="lookup") as service,
    ):
        status, _ = http_get(
            f"{service.url}/v1/connections?end_user_id=user-1&limit=50", {"Authorization": BEARER}
        )
        if status == 404:
            message = (
                "GET /v1/connections answers 404: the lookup API is not in this build;"
                " lookup benchmarks skipped"
            )
            say(message)
            return {"skipped": message}
        if status != 200:
            raise BenchError(f"GET /v1/connections answered {status} before any load")
        seeded = 0
        for size in sorted(sizes):
            seconds = seed_connections(database.url, start=seeded, stop=size)
            seeded = size
            say(f"lookup: {size} connections seeded in {seconds:.1f}s")
            if size == main_size:
                pairs = compare_lookups(options, harness, database, service, routes, "Postgres")
                comparisons.update({f"postgres_{route}": pair for route, pair in pairs.items()})
                if "lookup" in pairs:
                    scale[str(size)] = pairs["lookup"]["service"]
            if options.runs("scale") and str(size) not in scale:
                requests = lookup_requests(harness, "lookup", size)
                name = f"Postgres list by end user, {size} connections"
                side = Side("service", service, [requests] * options.rounds)
                scale[str(size)] = interleave(options, harness, name, [side], auth=BEARER)[
                    "service"
                ]
            if str(size) in scale:
                scale[str(size)]["seed_seconds"] = round(seconds, 1)
    return scale


def lookup_requests(harness: Harness, route: str, size: int) -> Path:
    population = size if route == "getbyid" else users_for(size)
    path = harness.workdir / f"{route}-{size}.txt"
    return write_requests(path, ROUTES[route][1], population=population)


def compare_lookups(
    options: Options,
    harness: Harness,
    database: Database,
    service: Server,
    routes: list[str],
    backend: str,
) -> dict[str, Any]:
    """Each route on the service (already running) and on the reference, same requests, in
    alternating rounds; first a sample of them on both, whose answers must be the same JSON."""
    size = options.main_lookup_size
    pairs: dict[str, Any] = {}
    reference_server = (
        harness.serve("reference", database, workers=1, log_name=f"{backend.lower()}-lookup")
        if options.reference
        else contextlib.nullcontext(None)
    )
    with reference_server as reference:
        for route in routes:
            label, _ = ROUTES[route]
            requests = lookup_requests(harness, route, size)
            pair: dict[str, Any] = {"label": f"{backend} {label}, {size:,} connections"}
            if reference is not None:
                pair["answers"] = same_answers(service, reference, requests)
                say(f"{backend} {label}: answers of service and reference {pair['answers']}")
            sides = [
                Side(kind, server, [requests] * options.rounds)
                for kind, server in (("service", service), ("reference", reference))
                if server is not None
            ]
            name = f"{backend} {label}, {size} connections"
            pair.update(interleave(options, harness, name, sides, auth=BEARER))
            pairs[route] = pair
    return pairs


def same_answers(
    service: Server, reference: Server, requests: Path, sample: int = 20
) -> dict[str, Any]:
    """Whether both servers answer the first ``sample`` requests with the same JSON."""
    different = []
    lines = requests.read_text().splitlines()[:sample]
    for line in lines:
        path = line.split(" ", 1)[1]
        answers = [
            http_get(f"{server.url}{path}", {"Authorization": BEARER})
            for server in (service, reference)
        ]
        (status, body), (ref_status, ref_body) = answers
        if status != ref_status or json.loads(body) != json.loads(ref_body):
            different.append(path)
    return {"checked": len(lines), "different": len(different), "examples": different[:3]}


def sqlite_phase(
    options: Options, harness: Harness, slices: list[Path], keys: set[str]
) -> dict[str, Any]:
    """The webhook ingest (1 worker) and the list by end user on SQLite, service and reference."""
    comparisons: dict[str, Any] = {
        "sqlite_ingest_1w": ingest_pair(options, harness, slices, keys, workers=1, sqlite=True)
    }
    size = options.main_lookup_size
    with harness.database("sqlite_lookup", sqlite=True) as database:
        assert database.path is not None
        seconds = seed_sqlite_connections(database.path, start=0, stop=size)
        say(f"SQLite lookup: {size} connections seeded in {seconds:.1f}s")
        with harness.serve("service", database, workers=1, log_name="sqlite-lookup") as service:
            pairs = compare_lookups(options, harness, database, service, ["lookup"], "SQLite")
    comparisons["sqlite_lookup"] = pairs["lookup"]
    return comparisons


def reconcile(options: Options, harness: Harness) -> dict[str, Any]:
    """Time reconcile against the fake Nango listing N connections: a first run that creates
    them all, then a second run that finds nothing to change."""
    results: dict[str, Any] = {}
    for size in options.reconcile_sizes:
        with harness.database(f"reconcile{size}") as database:
            first, second = time_reconcile(database.url, size)
        say(f"reconcile: {size} connections in {first:.1f}s, second run {second:.1f}s")
        results[str(size)] = {
            "connections": size,
            "seconds": round(first, 2),
            "second_run_seconds": round(second, 2),
        }
    return results


def time_reconcile(database_url: str, size: int) -> tuple[float, float]:
    import asyncio

    import httpx2

    from app.connections.reconcile import reconcile as run_reconcile
    from app.db.database import connected
    from app.nango.client import NangoClient
    from app.settings import Settings
    from tests.fakes.nango import FakeNango

    fake = FakeNango()
    for index in range(size):
        user = index // 3
        fake.add_connection(
            connection_id=f"reconcile-{index}",
            integration_id="github",
            tags={"end_user_id": f"user-{user}", "organization_id": f"org-{user // 10}"},
        )
    settings = Settings(
        database_url=database_url,
        nango_host="http://nango.test",
        nango_secret_key=fake.secret_key,
        _env_file=None,  # type: ignore[call-arg]
    )

    async def timed(nango: NangoClient, database: Any) -> tuple[float, Any]:
        started = time.perf_counter()
        counts = await run_reconcile(
            database=database,
            nango=nango,
            environment=settings.nango_environment,
            trigger="bench",
        )
        return time.perf_counter() - started, counts

    async def twice() -> tuple[float, float]:
        async with (
            connected(settings) as database,
            httpx2.AsyncClient(transport=fake.transport()) as http,
        ):
            nango = NangoClient.from_settings(settings, http)
            first, counts = await timed(nango, database)
            if counts is None or counts.created != size:
                raise BenchError(f"reconcile created {counts} of {size} connections")
            second, again = await timed(nango, database)
            if again is None or (again.created, again.updated, again.deleted) != (0, 0, 0):
                raise BenchError(f"a second reconcile changed something: {again}")
            return first, second

    return asyncio.run(twice())


@contextlib.contextmanager
def profiling(options: Options, server: Server, name: str, seconds: int) -> Iterator[None]:
    """With ``--profile``, py-spy samples the worker for about ``seconds`` (raw collapsed
    stacks)."""
    if not options.profile:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    output = RESULTS / f"profile-{name}.txt"
    command = [
        py_spy,
        "record",
        "--pid",
        str(server.worker_pids()[0]),
        "--duration",
        str(max(1, seconds - 1)),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
    ]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            recorder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
        say(f"  profile written to {output.relative_to(ROOT)}")


# Entry point ------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--duration",
        type=int,
        default=16,
        help="seconds per measurement: per server and comparison, over all its rounds",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="rounds per server in each comparison (service, reference, reference, service, ...),"
        " each --duration/--rounds seconds; an even count cancels a steady drift exactly",
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--bodies", type=int, default=120_000, help="distinct signed webhooks")
    parser.add_argument("--workers", default="1,2", help="uvicorn workers for Postgres ingest")
    parser.add_argument(
        "--lookup-sizes",
        default="10000,100000",
        help="connections for the service's scale check (largest ÷ smallest); add 1000000",
    )
    parser.add_argument(
        "--main-lookup-size",
        type=int,
        default=100_000,
        help="connections for the service-vs-reference lookups (Postgres and SQLite)",
    )
    parser.add_argument(
        "--reconcile-sizes",
        default="10000",
        help="connections listed by the fake Nango; add 100000",
    )
    parser.add_argument(
        "--console-size",
        type=int,
        default=1_000_000,
        help="connections and deliveries seeded (generate_series) for the console's pages",
    )
    parser.add_argument(
        "--console-requests", type=int, default=20, help="requests per console page, one at a time"
    )
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--log-level", default="info", help="the service's LOG_LEVEL")
    parser.add_argument("--pool-size", type=int, help="DATABASE_POOL_SIZE for the service")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy one round of every measured server"
    )
    parser.add_argument(
        "--skip",
        default="",
        help=f"comma-separated phases to leave out: {','.join(PHASES)},reference"
        " (reference: measure the service alone)",
    )
    parser.add_argument("--only", default="", help="comma-separated phases to run, no others")
    args = parser.parse_args(argv)

    def names(text: str, allowed: tuple[str, ...]) -> set[str]:
        chosen = {part.strip() for part in text.split(",") if part.strip()}
        if chosen - set(allowed):
            parser.error(f"unknown phase(s) {', '.join(sorted(chosen - set(allowed)))}")
        return chosen

    def numbers(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part.strip()]

    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    skip = names(args.skip, (*PHASES, "reference"))
    only = names(args.only, PHASES) or set(PHASES)
    return Options(
        duration=args.duration,
        rounds=args.rounds,
        connections=args.connections,
        threads=args.threads,
        bodies=args.bodies,
        workers=numbers(args.workers),
        lookup_sizes=numbers(args.lookup_sizes),
        main_lookup_size=args.main_lookup_size,
        reconcile_sizes=numbers(args.reconcile_sizes),
        admin_url=args.admin_url or DEFAULT_ADMIN_URL,
        log_level=args.log_level,
        pool_size=args.pool_size,
        profile=args.profile,
        console_size=args.console_size,
        console_requests=args.console_requests,
        phases=only - skip,
        reference="reference" not in skip,
    )


def _run_header(options: Options) -> dict[str, Any]:
    for tool in ("wrk", "pgbench"):
        if find_tool(tool) is None:
            raise BenchError(f"{tool} is missing (Debian: apt-get install -y {tool})")
    return {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "options": {
            key: sorted(value) if isinstance(value, set) else value
            for key, value in vars(options).items()
            if key != "admin_url"
        },
    }


def run(options: Options, harness: Harness) -> dict[str, Any]:
    results = _run_header(options)
    started = time.perf_counter()
    webhooks = harness.workdir / "webhooks.txt"
    keys = write_webhooks(webhooks, options.bodies, run_tag=harness.run_id)
    slices = write_slices(webhooks, options.rounds)
    say(
        f"{options.bodies} signed webhooks written in {time.perf_counter() - started:.1f}s,"
        f" in {options.rounds} slices (one per ingest round)"
    )

    # Service ÷ reference, measured in alternating rounds with the same requests.
    comparisons: dict[str, Any] = {}
    results["comparisons"] = comparisons
    if options.runs("http"):
        results["http_ceiling"] = http_ceiling(options, harness, webhooks)
    if options.runs("db"):
        results["db_ceiling"] = db_ceiling(options, harness)
    if options.runs("ingest"):
        for workers in options.workers:
            comparisons[f"postgres_ingest_{workers}w"] = ingest_pair(
                options, harness, slices, keys, workers=workers
            )
    if any(options.runs(phase) for phase in (*ROUTES, "scale")):
        results["lookup_scale"] = lookups(options, harness, comparisons)
    if options.runs("sqlite"):
        comparisons.update(sqlite_phase(options, harness, slices, keys))
    if options.runs("reconcile"):
        results["reconcile"] = reconcile(options, harness)
    if options.runs("console"):
        results["console"] = console(options, harness)
    for comparison in comparisons.values():
        comparison["ratio"] = ratio(comparison.get("service"), comparison.get("reference"))
        comparison["round_ratios"] = round_ratios(comparison)
    results["seconds"] = round(time.perf_counter() - started)
    results["targets"] = verdicts(results)
    return results


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    harness = Harness(options)
    # SIGTERM (a CI timeout, kill) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(options, harness)
    except BenchError as error:
        say(f"stopped: {error}")
        return 1
    finally:
        harness.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = RESULTS / f"bench-{stamp}.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    results_md = output.with_suffix(".md")
    results_md.write_text(table + "\n")
    print()
    print(table)
    print()
    say(f"results: {output.relative_to(ROOT)} and {results_md.name}")
    # Ratios are only meaningful if both servers stored every delivery and answered alike.
    sound = [check["met"] for check in results["targets"] if check.get("required")]
    return 0 if all(met is not False for met in sound) else 2
