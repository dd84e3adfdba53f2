"""Shared fixtures: a real MLflow store per test (SQLite, migrated once per session), and a
real PostgreSQL server for the tests that run against both stores."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import postgres_server
import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer, migrate

STORES = ["sqlite", "postgres"]  # the `store` fixture's parameters


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


@pytest.fixture(scope="module")
def server_url(_template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free port of 127.0.0.1 (SQLite store, served artifacts),
    one per test module: starting one takes seconds."""
    server = MlflowServer.over_copy(_template_store, tmp_path_factory.mktemp("server"))
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _postgres() -> Iterator[postgres_server.Postgres]:
    """One PostgreSQL server for the session, with a migrated, empty MLflow database
    (`template`) that each test's database copies. Skipped where PostgreSQL is not installed,
    failed instead under HARNESS_REQUIRE_SERVICES=1 (CI)."""
    why = postgres_server.missing()
    if why:
        if os.environ.get(postgres_server.REQUIRE) == "1":
            pytest.fail(f"{postgres_server.REQUIRE}=1 but {why}")
        pytest.skip(why)
    server = postgres_server.Postgres()
    server.start()
    try:
        uri = server.create_database("template_mlflow")
        migrate(uri, cwd=server.folder)
        yield server
    finally:
        server.stop()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, _template_store: Path, tmp_path: Path) -> str:
    """A fresh, migrated store of each kind: a SQLite file in this test's folder, or a new
    PostgreSQL database (a copy of the session's template)."""
    if request.param == "sqlite":
        db = tmp_path / "store.db"
        shutil.copy(_template_store, db)
        return f"sqlite:///{db}"
    pg: postgres_server.Postgres = request.getfixturevalue("_postgres")
    return pg.create_database(f"t_{uuid.uuid4().hex[:12]}", template="template_mlflow")
