"""Shared fixtures: a real MLflow SQLite store per test, migrated once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite store; creating one runs MLflow's migrations (seconds)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(_template_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh store in this test's folder; artifacts land beside it (./mlruns in tmp_path)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_template_store, db)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{db}"


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)
