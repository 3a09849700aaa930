"""Running the ``nango-registry`` console script as a user does: a process, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMAND = Path(sys.executable).with_name("nango-registry")


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def logs(self) -> list[dict[str, Any]]:
        """stderr as JSON log lines; a line that is neither a log nor ``nango-registry: ...``
        fails the test (it would be a traceback or stray output)."""
        lines = []
        for line in self.err.splitlines():
            if line.startswith("nango-registry: "):
                continue
            try:
                lines.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"stderr line is not a JSON log line: {line!r}") from None
        return lines

    def failures(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("nango-registry: ")]


def run_cli(
    *argv: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> Ran:
    """The command in ``cwd`` with only these settings (nothing of the developer's shell)."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "LOG_LEVEL": "info",
        **(env or {}),
    }
    done = subprocess.run(
        [str(COMMAND), *argv],
        cwd=cwd,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)
