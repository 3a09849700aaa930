"""What a command writes: its result on stdout, a failure as one line on stderr.

Logs are JSON lines on stderr (``app.logs``), so ``KEY=$(nango-registry api-keys create ...)``
captures the key and nothing else.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def fail(message: str, code: int = 1) -> int:
    """One line on stderr, prefixed with the program's name; returns the exit status."""
    print(f"nango-registry: {message}", file=sys.stderr, flush=True)
    return code


def print_json(document: Any) -> None:
    print(json.dumps(document, sort_keys=True, default=str), flush=True)
