"""Issue 14, point 12: the README's quickstart, as written, works against a real server.

The commands are read from README.md. ``make run`` (install, migrate, serve on 8000) becomes
``nango-registry migrate`` and ``serve`` from the same virtual environment, on a free port set
in the same ``.env`` the quickstart writes, so the other commands find it as they would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.net import free_port
from tests.serve import serving

ROOT = Path(__file__).resolve().parents[1]


def quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def bash(script: str, *, cwd: Path, env: dict[str, str], timeout: float = 90) -> str:
    done = subprocess.run(
        ["/bin/bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


def test_the_quickstart_as_written(tmp_path: Path) -> None:
    first, second = quickstart_blocks()
    assert "make run" in first.splitlines()
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    # A fresh shell: no virtual environment active, nothing of the developer's settings.
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    port = free_port()
    bash(first.replace("make run", "true"), cwd=tmp_path, env=env)
    with (tmp_path / ".env").open("a", encoding="utf-8") as dotenv:
        dotenv.write(f"PORT={port}\n")
    start = ". .venv/bin/activate && nango-registry migrate && exec nango-registry serve"
    # serve finds its port in .env, as the other commands do.
    with serving(env, cwd=tmp_path, port=port, command=["/bin/bash", "-c", start]):
        # The second terminal, word for word but for the port.
        out = bash(second.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), cwd=tmp_path, env=env)
    lookup = json.loads(out.splitlines()[-1])
    (connection,) = lookup["data"]
    assert connection["end_user"]["id"] == "user_42"
    assert connection["status"] == "active"
    assert "applied" in out
    assert os.path.exists(tmp_path / "nango-registry.db")
