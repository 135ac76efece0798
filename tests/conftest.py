"""Shared fixtures. Tests run offline, on the CPU, against temporary SQLite files and,
where ``COMPRESSLAB_TEST_PG_URL`` names a PostgreSQL database (``.ci/run`` starts one),
against a fresh schema in it too.

``db_url`` / ``sf`` are parametrized by backend: every database test in the modules of
``PG_EVERY_TEST`` (queue, workers, bundles, pages, and ``test_db_*``) and those marked
``@pytest.mark.both_backends`` run on both; the rest on SQLite only (the end-to-end tests
compress models and are slow, and the SQL they issue is what those modules cover).
With ``CI=true`` a missing PostgreSQL is a failure; elsewhere those tests skip.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Never reach the hub from a test, whatever the machine.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["COMPRESSLAB_NO_AUTOWORKER"] = "1"
os.environ.setdefault("COMPRESSLAB_NO_AUTOTUNE", "1")  # kernel tuning only where a test asks
# Never read or write the developer's data folder (a kernel table tuned there changes
# which kernel paths run, and with them float rounding); tests may point it elsewhere.
os.environ["COMPRESSLAB_DATA"] = tempfile.mkdtemp(prefix="compresslab-test-data-")


@pytest.fixture(autouse=True)
def _fresh_kernel_choices() -> None:
    """Kernel path choices are remembered per shape; a test that swaps tables or paths
    must not inherit another test's."""
    ops = sys.modules.get("core.kernels.ops")
    if ops is not None:
        ops.forget_choices()


PG_ENV = "COMPRESSLAB_TEST_PG_URL"
PG_EVERY_TEST = {"test_queue", "test_workers", "test_bundle", "test_ui_pages"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run this database test on PostgreSQL as well as SQLite"
    )


def _on_postgresql(metafunc: pytest.Metafunc) -> bool:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    return (
        module in PG_EVERY_TEST
        or module.startswith("test_db_")
        or metafunc.definition.get_closest_marker("both_backends") is not None
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames:
        backends = ["sqlite", "postgresql"] if _on_postgresql(metafunc) else ["sqlite"]
        metafunc.parametrize("db_backend", backends, indirect=True)


def pg_base_url() -> str | None:
    """The PostgreSQL database tests may use, or None; fails the test in CI without it."""
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {PG_ENV} is not set: .ci/run must start PostgreSQL")
    return None


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    """ "sqlite" or "postgresql" (parametrized by pytest_generate_tests)."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql" and pg_base_url() is None:
        pytest.skip(f"PostgreSQL: set {PG_ENV} (bash .ci/run starts a server and sets it)")
    return backend


def _pg_admin(base: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(base, poolclass=NullPool, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A URL on a fresh, empty schema of the test PostgreSQL database (dropped after)."""
    from sqlalchemy import make_url, text

    base = pg_base_url()
    if base is None:
        pytest.skip(f"PostgreSQL: set {PG_ENV} (bash .ci/run starts a server and sets it)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin(base)
    with admin.connect() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    url_s = url.render_as_string(hide_password=False)
    try:
        yield url_s
    finally:
        from db.session import dispose_engine

        dispose_engine(url_s)
        with admin.connect() as c:
            c.execute(text("SET lock_timeout = '20s'"))
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def db_url(
    db_backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh database of ``db_backend``, also the default for code that reads
    DATABASE_URL (pages under AppTest, worker subprocesses)."""
    if db_backend == "postgresql":
        url = request.getfixturevalue("pg_schema_url")
    else:
        url = f"sqlite:///{tmp_path / 'test.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path / "data"))
    yield url
    if db_backend == "sqlite":
        from db.session import dispose_engine

        dispose_engine(url)


@pytest.fixture
def sf(db_url: str):
    from db.session import session_factory

    return session_factory(db_url)
