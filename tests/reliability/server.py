"""``nango-registry serve`` as a subprocess on a free loopback port, its output kept in a file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from tests.net import free_port


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    output: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """Worker processes: children of the supervisor started by multiprocessing's spawn."""
        pids = []
        for child in _children(self.process.pid):
            cmdline = _cmdline(child)
            if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                pids.append(child)
        return sorted(pids)

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")


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


def serve(*, env: dict[str, str], output: Path, workers: int = 1, timeout: float = 60) -> Served:
    port = free_port()
    full_env = {
        key: value
        for key, value in os.environ.items()
        # The child gets exactly the settings the test chooses, not the developer's.
        if not key.startswith(("DATABASE_", "NANGO_", "REGISTRY_", "WEBHOOK_", "TEST_"))
    }
    full_env.update(env)
    full_env.update({"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": str(workers)})
    executable = Path(sys.executable).with_name("nango-registry")
    handle = output.open("wb")
    process = subprocess.Popen(
        [str(executable), "serve"],
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=output.parent,
        start_new_session=True,  # its own process group: cleanup reaches orphaned workers too
    )
    handle.close()
    served = Served(process=process, port=port, output=output, env=full_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{served.text()}")
        try:
            healthy = httpx2.get(served.base_url + "/healthz", timeout=1).status_code == 200
            if healthy and (workers == 1 or len(served.worker_pids()) == workers):
                return served
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    stop(served)
    raise RuntimeError(f"serve did not become healthy in {timeout} s:\n{served.text()}")


def stop(served: Served, timeout: float = 30) -> None:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(10)
    kill_group(served.process)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the server's process group (workers of a killed supervisor)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
