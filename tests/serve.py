"""The one way tests start a real ``nango-registry serve``: a subprocess in its own process group,
bound to a loopback port through ``HOST`` and ``PORT`` as on a platform, its output kept in a
file, awaited until it answers, and stopped with every worker it left behind."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import TEST_API_KEY, TEST_SIGNING_KEY
from tests.net import free_port

COMMAND = [str(Path(sys.executable).with_name("nango-registry")), "serve"]


def suite_settings(database_url: str, **settings: str) -> dict[str, str]:
    """The suite's keys, a Nango that is never reached, JSON logs at info; then ``settings``."""
    return {
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key",
        "NANGO_WEBHOOK_SIGNING_KEYS": TEST_SIGNING_KEY,
        "REGISTRY_API_KEYS": TEST_API_KEY,
        "NANGO_HOST": "http://127.0.0.1:9",
        "NANGO_SECRET_KEY": "test-nango-secret-key",
        "LOG_LEVEL": "info",
        **settings,
    }


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    log: Path  # standard error, and standard output unless kept apart
    stdout: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def text(self) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        if self.stdout != self.log:
            text += self.stdout.read_text(encoding="utf-8", errors="replace")
        return text

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        found = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    found.append(parsed)
        return found

    def events(self, name: str) -> int:
        """How many JSON log lines carry this event."""
        return sum(line.get("event") == name for line in self.lines())

    def worker_pids(self) -> list[int]:
        """Worker processes: children of the supervisor started by multiprocessing's spawn."""
        pids = []
        for child in _children(self.process.pid):
            cmdline = _cmdline(child)
            if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                pids.append(child)
        return sorted(pids)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(part) for part in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start(
    settings: dict[str, str],
    *,
    cwd: Path,
    log: Path | None = None,
    workers: int = 1,
    port: int | None = None,
    command: list[str] | None = None,
    ready: str = "/healthz",
    stdout_apart: bool = False,
    timeout: float = 60,
) -> Served:
    """Start ``command`` (``nango-registry serve``) in ``cwd`` and wait until ``ready`` answers
    200 and, with several workers, each of them has logged ``started``.

    Its environment is ``PATH``, ``HOME`` (``cwd``), ``LANG`` and ``settings``: nothing from the
    developer's shell. It is bound to a free loopback port through ``HOST``, ``PORT`` and
    ``WEB_CONCURRENCY``; given a ``port``, the server finds it itself (a ``.env`` in ``cwd``)
    and none of the three is set.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
    env.update(settings)
    if port is None:
        port = free_port()
        env.update({"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": str(workers)})
    log = log or cwd / f"serve-{port}.log"
    stdout = log.with_suffix(".stdout") if stdout_apart else log
    with log.open("wb") as errors, contextlib.ExitStack() as files:
        out = files.enter_context(stdout.open("wb")) if stdout_apart else errors
        process = subprocess.Popen(
            command or COMMAND,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=errors,
            start_new_session=True,  # its own process group: cleanup reaches orphaned workers too
        )
    served = Served(process=process, port=port, log=log, stdout=stdout, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{served.text()}")
        try:
            healthy = served.request("GET", ready, timeout=1)[0] == 200
            # One worker can answer before the other has started.
            if healthy and (workers == 1 or served.events("started") == workers):
                return served
        except OSError:
            pass
        time.sleep(0.1)
    stop(served)
    raise RuntimeError(f"serve did not answer {ready} within {timeout} s:\n{served.text()}")


def stop(served: Served, timeout: float = 30) -> None:
    """SIGTERM, SIGKILL if it is still there after ``timeout``, then whatever is left of its
    process group (the workers of a supervisor killed by a test)."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(served.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(settings: dict[str, str], *, cwd: Path, **options: Any) -> Iterator[Served]:
    """``start``, then ``stop`` however the block ends."""
    served = start(settings, cwd=cwd, **options)
    try:
        yield served
    finally:
        stop(served)
