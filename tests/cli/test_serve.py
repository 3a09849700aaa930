from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cli.serve import _prepare_metrics_directory


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The function under test sets PROMETHEUS_MULTIPROC_DIR for the workers; undo it after."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")


def test_one_worker_needs_no_metrics_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _prepare_metrics_directory(None, workers=1) is None
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_several_workers_get_a_fresh_shared_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    created = _prepare_metrics_directory(None, workers=3)
    try:
        assert created is not None
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == created
        assert list(Path(created).iterdir()) == []
    finally:
        if created is not None:
            Path(created).rmdir()


def test_a_given_directory_loses_the_previous_runs_samples(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_4242.db").write_bytes(b"stale")
    (directory / "histogram_4242.db").write_bytes(b"stale")
    (directory / "notes.txt").write_text("not ours")
    assert _prepare_metrics_directory(str(directory), workers=2) is None
    assert sorted(path.name for path in directory.iterdir()) == ["notes.txt"]


def test_a_given_directory_is_created(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "metrics"
    assert _prepare_metrics_directory(str(directory), workers=1) is None
    assert directory.is_dir()
