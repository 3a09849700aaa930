"""Issue 13, point 9: a key's use is recorded, so an operator can tell which keys are unused.

Against a real server: a burst of requests with a stored key writes its last use once, after
the answers, and ``api-keys list`` shows it; an unused key shows none.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import Engine, text
from sqlmodel import Session

from app.api.keys import hash_key
from app.db.tables import ApiKeyTable
from tests.security.attacker import serve


def _last_used(engine: Engine) -> dict[str, object]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, last_used_at FROM api_keys")).all()
    return {name: used for name, used in rows}


def test_last_use_is_recorded_once_a_minute_and_listed(
    tmp_path: Path, database_url: str, sync_engine: Engine
) -> None:
    with Session(sync_engine) as session:
        session.add(ApiKeyTable(name="billing", key_hash=hash_key("billing-secret")))
        session.add(ApiKeyTable(name="forgotten", key_hash=hash_key("forgotten-secret")))
        session.add(ApiKeyTable(name="probe", key_hash=hash_key("probe-secret")))
        session.commit()
    with serve(tmp_path, database_url) as server:
        for _ in range(20):
            answer = server.request(
                "GET", "/v1/connections", "Authorization: Bearer billing-secret"
            )
            assert answer.status == 200
        deadline = time.monotonic() + 5
        while _last_used(sync_engine)["billing"] is None:
            assert time.monotonic() < deadline, "the use was never recorded"
            time.sleep(0.05)
        first = _last_used(sync_engine)["billing"]
        server.request("GET", "/v1/connections", "Authorization: Bearer billing-secret")
        # Uses are written in the order they are noted: once the probe's (noted after it) is
        # written, billing's second use would have been, had it been noted.
        server.request("GET", "/v1/connections", "Authorization: Bearer probe-secret")
        deadline = time.monotonic() + 5
        while _last_used(sync_engine)["probe"] is None:
            assert time.monotonic() < deadline, "the probe's use was never recorded"
            time.sleep(0.05)
        assert _last_used(sync_engine)["billing"] == first  # once a minute, not per request
    assert _last_used(sync_engine)["forgotten"] is None

    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "warning"}
    command = Path(sys.executable).with_name("nango-registry")
    listing = subprocess.run(
        [str(command), "api-keys", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert listing[0].split()[3] == "LAST_USED_AT"
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert rows["billing"][3].startswith(str(first)[:10])
    assert rows["forgotten"][3] == "-"
