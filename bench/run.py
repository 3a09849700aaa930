"""``python -m bench``: the receiver and the lookup API against the limits of this machine.

Every phase runs for a fixed time on loopback, against throwaway Postgres databases that are
dropped at the end, with every server it started stopped, whatever happens. Ratios matter more
than absolute numbers, which drift on shared machines: each one compares the service with a
ceiling measured in the same run (a bare Starlette app for HTTP, ``pgbench`` for the database).
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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.seed import seed_connections, users_for

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SIGNING_KEY = "5f3c0f0e-9a4b-4b8e-9d7c-2a1b3c4d5e6f"
API_KEY = "bench-full-access-key-0123456789abcdef"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Targets of issue 7, checked on every run.
TARGET_INGEST_RATIO = 0.5
TARGET_INGEST_P99_MS = 50.0
TARGET_LOOKUP_RATIO = 0.25
TARGET_LOOKUP_P99_MS = 20.0
TARGET_SCALE_RATIO = 0.9
TARGET_RSS_MB = 150.0


class BenchError(RuntimeError):
    """A phase could not run; the message says why and what to do."""


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Options:
    duration: int
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
    skip: set[str] = field(default_factory=set)


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
        from app.db.migrate import upgrade
        from app.settings import normalise_database_url

        upgrade(normalise_database_url(self.conninfo(name)))
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

    def app_env(self, database: str, *, workers: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": self.conninfo(database),
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
) -> dict[str, Any]:
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
    command = [
        wrk,
        f"-t{options.threads}",
        f"-c{options.connections}",
        f"-d{options.duration}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "replay.lua"),
        url,
    ]
    finished = subprocess.run(
        command, env=env, capture_output=True, timeout=options.duration + 120, check=False
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


def run_pgbench(options: Options, harness: Harness, database: str) -> dict[str, Any]:
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
        harness.conninfo(database),
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


def write_lookups(path: Path, *, users: int, count: int = 50_000) -> None:
    chooser = random.Random(7)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            out.write(f"GET /v1/connections?end_user_id=user-{chooser.randrange(users)}&limit=50\n")


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
    database = harness.create_database("pgbench")
    try:
        say(f"DB ceiling: pgbench, the receiver's transaction, {options.connections} clients")
        result = run_pgbench(options, harness, database)
        say(f"  {result['rps']} tx/s, p99 {result['p99_ms']} ms")
        return result
    finally:
        harness.drop_database(database)


def ingest(
    options: Options, harness: Harness, webhooks: Path, keys: set[str], workers: int
) -> dict[str, Any]:
    database = harness.create_database(f"ingest{workers}")
    acked_file = harness.workdir / f"acked-{workers}.txt"
    try:
        env = harness.app_env(database, workers=workers)
        with harness.server(app_command(workers), env=env, log_name=f"ingest{workers}") as server:
            # Opens the pool's first connection before the clock starts.
            http_get(f"{server.url}/readyz")
            say(f"ingest: {workers} worker(s), {options.connections} connections")
            with profiling(options, harness, server, f"ingest-{workers}w"):
                result = run_wrk_on(
                    server,
                    options,
                    url=f"{server.url}/webhooks/nango",
                    requests_file=webhooks,
                    acked_file=acked_file,
                )
            time.sleep(1)  # requests wrk gave up on at the deadline may still commit
            pids = server.worker_pids()
            result["rss_mb"] = [round(rss_mb(pid), 1) for pid in pids]
            say(
                f"  {result['rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms,"
                f" failed {result['failed']}, RSS {result['rss_mb']} MB,"
                f" {result['cpu_ms_per_request']} ms CPU/request"
            )
        result["correctness"] = check_stored_once(harness, database, acked_file, keys)
        say(f"  correctness: {result['correctness']['verdict']}")
        return result
    finally:
        harness.drop_database(database)


def check_stored_once(
    harness: Harness, database: str, acked_file: Path, keys: set[str]
) -> dict[str, Any]:
    """Every acknowledged delivery is stored, once, and applied once."""
    acked = [int(line) for line in acked_file.read_text().split()]
    with psycopg.connect(harness.conninfo(database)) as conn:
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


def lookups(options: Options, harness: Harness) -> dict[str, Any]:
    database = harness.create_database("lookup")
    try:
        env = harness.app_env(database, workers=1)
        with harness.server(app_command(1), env=env, log_name="lookup") as server:
            status, _ = http_get(
                f"{server.url}/v1/connections?end_user_id=user-1&limit=50",
                {"Authorization": f"Bearer {API_KEY}"},
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
            results: dict[str, Any] = {}
            seeded = 0
            for size in sorted(options.lookup_sizes):
                seconds = seed_connections(harness.conninfo(database), start=seeded, stop=size)
                seeded = size
                say(f"lookup: {size} connections seeded in {seconds:.1f}s")
                paths = harness.workdir / f"lookups-{size}.txt"
                write_lookups(paths, users=users_for(size))
                with profiling(options, harness, server, f"lookup-{size}"):
                    result = run_wrk_on(
                        server,
                        options,
                        url=server.url,
                        requests_file=paths,
                        auth=f"Bearer {API_KEY}",
                    )
                result["seed_seconds"] = round(seconds, 1)
                say(
                    f"  {result['rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
                )
                results[str(size)] = result
            return results
    finally:
        harness.drop_database(database)


def reconcile(options: Options, harness: Harness) -> dict[str, Any]:
    """Time reconcile against the fake Nango listing N connections: a first run that creates
    them all, then a second run that finds nothing to change."""
    results: dict[str, Any] = {}
    for size in options.reconcile_sizes:
        database = harness.create_database(f"reconcile{size}")
        try:
            first, second = time_reconcile(harness, database, size)
        finally:
            harness.drop_database(database)
        say(f"reconcile: {size} connections in {first:.1f}s, second run {second:.1f}s")
        results[str(size)] = {
            "connections": size,
            "seconds": round(first, 2),
            "second_run_seconds": round(second, 2),
        }
    return results


def time_reconcile(harness: Harness, database: str, size: int) -> tuple[float, float]:
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
        database_url=harness.conninfo(database),
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
def profiling(options: Options, harness: Harness, server: Server, name: str) -> Iterator[None]:
    """With ``--profile``, py-spy samples the worker during the phase (collapsed stacks)."""
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
        str(max(1, options.duration - 2)),
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


# Report -------------------------------------------------------------------------------------


def ratio(numerator: dict[str, Any] | None, denominator: dict[str, Any] | None) -> float | None:
    if not numerator or not denominator or "rps" not in numerator or "rps" not in denominator:
        return None
    if not denominator["rps"]:
        return None
    return round(numerator["rps"] / denominator["rps"], 3)


def verdicts(results: dict[str, Any], options: Options) -> list[dict[str, Any]]:
    ingest1 = results.get("ingest", {}).get("1")
    lookup_main = results.get("lookup", {}).get(str(options.main_lookup_size))
    sizes = sorted(options.lookup_sizes)
    small = results.get("lookup", {}).get(str(sizes[0])) if sizes else None
    large = results.get("lookup", {}).get(str(sizes[-1])) if sizes else None
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, target: str, met: bool | None) -> None:
        checks.append({"check": name, "value": value, "target": target, "met": met})

    ingest_ratio = ratio(ingest1, results.get("db_ceiling"))
    check(
        "ingest / pgbench",
        ingest_ratio,
        f">= {TARGET_INGEST_RATIO}",
        None if ingest_ratio is None else ingest_ratio >= TARGET_INGEST_RATIO,
    )
    p99 = ingest1.get("p99_ms") if ingest1 else None
    check(
        "ingest p99 (ms)",
        p99,
        f"< {TARGET_INGEST_P99_MS:g}",
        None if p99 is None else p99 < TARGET_INGEST_P99_MS,
    )
    lookup_ratio = ratio(lookup_main, results.get("http_ceiling", {}).get("get"))
    check(
        "lookup / bare Starlette",
        lookup_ratio,
        f">= {TARGET_LOOKUP_RATIO}",
        None if lookup_ratio is None else lookup_ratio >= TARGET_LOOKUP_RATIO,
    )
    lookup_p99 = lookup_main.get("p99_ms") if lookup_main else None
    check(
        "lookup p99 (ms)",
        lookup_p99,
        f"< {TARGET_LOOKUP_P99_MS:g}",
        None if lookup_p99 is None else lookup_p99 < TARGET_LOOKUP_P99_MS,
    )
    scale = ratio(large, small) if large is not small else None
    check(
        f"lookup {sizes[-1] if sizes else '?'} / {sizes[0] if sizes else '?'} connections",
        scale,
        f">= {TARGET_SCALE_RATIO}",
        None if scale is None else scale >= TARGET_SCALE_RATIO,
    )
    rss = max(ingest1["rss_mb"]) if ingest1 else None
    check(
        "worker RSS after ingest (MB)",
        rss,
        f"< {TARGET_RSS_MB:g}",
        None if rss is None else rss < TARGET_RSS_MB,
    )
    stored = [r["correctness"]["ok"] for r in results.get("ingest", {}).values()]
    check(
        "acknowledged deliveries stored once",
        None,
        "all",
        all(stored) if stored else None,
    )
    return checks


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| Measurement | req/s | p50 ms | p99 ms | CPU ms/req | Notes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]

    def row(name: str, result: dict[str, Any] | None, notes: str = "") -> None:
        if not result:
            return
        if "skipped" in result:
            lines.append(f"| {name} | | | | | skipped: {result['skipped']} |")
            return
        cpu = result.get("cpu_ms_per_request")
        lines.append(
            f"| {name} | {result['rps']:.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} |"
            f" {'' if cpu is None else f'{cpu:.2f}'} | {notes} |"
        )

    http = results.get("http_ceiling", {})
    row("HTTP ceiling: bare Starlette GET", http.get("get"))
    row("HTTP ceiling: bare Starlette POST (webhook bodies)", http.get("post"))
    row("DB ceiling: pgbench, receiver transaction", results.get("db_ceiling"), "tx/s")
    for workers, result in results.get("ingest", {}).items():
        correctness = result["correctness"]
        notes = (
            f"RSS {', '.join(f'{mb:.0f}' for mb in result['rss_mb'])} MB;"
            f" {correctness['acknowledged']} acknowledged, {correctness['stored']} stored;"
            f" {correctness['verdict']}; non-2xx {result['failed']}"
        )
        row(f"Webhook ingest, {workers} worker(s)", result, notes)
    lookup = results.get("lookup", {})
    if "skipped" in lookup:
        row("Lookup by end user", lookup)
    else:
        for size, result in lookup.items():
            row(f"Lookup by end user, {int(size):,} connections", result, "")
    reconcile_results = results.get("reconcile", {})
    lines.append("")
    for size, result in reconcile_results.items():
        lines.append(
            f"Reconcile from the fake Nango, {int(size):,} connections: {result['seconds']} s"
            f" (second run, nothing to change: {result['second_run_seconds']} s)."
        )
    lines += ["", "| Target | Value | Goal | Met |", "| --- | ---: | ---: | --- |"]
    for check in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
        value = "" if check["value"] is None else f"{check['value']:g}"
        lines.append(f"| {check['check']} | {value} | {check['target']} | {met} |")
    return "\n".join(lines)


# Entry point ------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=int, default=20, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--bodies", type=int, default=120_000, help="distinct signed webhooks")
    parser.add_argument("--workers", default="1,2", help="uvicorn workers for ingest runs")
    parser.add_argument("--lookup-sizes", default="10000,100000,1000000")
    parser.add_argument("--main-lookup-size", type=int, default=100_000)
    parser.add_argument("--reconcile-sizes", default="10000,100000")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--log-level", default="info", help="the servers' LOG_LEVEL")
    parser.add_argument("--pool-size", type=int, help="DATABASE_POOL_SIZE for the app")
    parser.add_argument("--profile", action="store_true", help="py-spy every app phase")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated phases to leave out: http,db,ingest,lookup,reconcile",
    )
    args = parser.parse_args(argv)

    def numbers(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part.strip()]

    return Options(
        duration=args.duration,
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
        skip={part.strip() for part in args.skip.split(",") if part.strip()},
    )


def run(options: Options, harness: Harness) -> dict[str, Any]:
    results: dict[str, Any] = {
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
    for tool in ("wrk", "pgbench"):
        if find_tool(tool) is None:
            raise BenchError(f"{tool} is missing (Debian: apt-get install -y {tool})")
    webhooks = harness.workdir / "webhooks.txt"
    started = time.perf_counter()
    keys = write_webhooks(webhooks, options.bodies, run_tag=harness.run_id)
    say(f"{options.bodies} signed webhooks written in {time.perf_counter() - started:.1f}s")

    if "http" not in options.skip:
        results["http_ceiling"] = http_ceiling(options, harness, webhooks)
    if "db" not in options.skip:
        results["db_ceiling"] = db_ceiling(options, harness)
    if "ingest" not in options.skip:
        results["ingest"] = {}
        for workers in options.workers:
            results["ingest"][str(workers)] = ingest(options, harness, webhooks, keys, workers)
            if results["ingest"][str(workers)]["wrapped"]:
                say("  WARNING: wrk ran out of distinct bodies; raise --bodies")
    if "lookup" not in options.skip:
        results["lookup"] = lookups(options, harness)
    if "reconcile" not in options.skip:
        results["reconcile"] = reconcile(options, harness)
    results["targets"] = verdicts(results, options)
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
    ok = all(r["correctness"]["ok"] for r in results.get("ingest", {}).values())
    return 0 if ok else 2
