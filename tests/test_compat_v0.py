"""A database written by an earlier main (tests/data/compresslab_v0.db.gz, see its README)
still shows on every page: the redesign of the run record must not strand stored runs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import queue
from db.session import session_factory
from ui.shell import PAGES, RUN

APP = str(Path(__file__).resolve().parent.parent / "app.py")
V0_DB = Path(__file__).resolve().parent / "data" / "compresslab_v0.db.gz"
V0_FINISHED = {1: "gptq", 2: "rtn", 3: "wanda + rtn", 4: "awq", 5: "rtn bits=3", 6: "rtn bits=8"}
V0_GPTQ4_PPL = 42.501397408521775  # run 1 as the old main recorded it


@pytest.fixture
def v0_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "v0.db"
    with gzip.open(V0_DB, "rb") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    url = f"sqlite:///{path}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("COMPRESSLAB_DATA", str(tmp_path / "data"))
    return url


def _app(page: str, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    if query:
        at.query_params.update(query)
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _shown(at: AppTest) -> str:
    """Everything a page wrote as text or tables, in one string to search."""
    parts = [
        str(e.value) for kind in ("markdown", "caption", "subheader", "info") for e in at.get(kind)
    ]
    parts += [d.value.to_string() for d in at.dataframe]
    return "\n".join(parts)


def test_v0_runs_read_back_through_the_queue(v0_url: str) -> None:
    sf = session_factory(v0_url)
    runs = {j.id: j for j in queue.finished_runs(sf)}
    assert set(runs) == set(V0_FINISHED)
    assert {i: runs[i].recipe_label for i in runs} == V0_FINISHED
    assert runs[1].result["perplexity"] == pytest.approx(V0_GPTQ4_PPL, rel=1e-12)
    assert len(queue.layer_stats(sf, 1)) > 0
    assert queue.get_job(sf, 8).status == "failed"
    assert queue.get_job(sf, 7).spec["calib"].startswith("upload:")


@pytest.mark.parametrize("page", [p[0] for p in PAGES if p[0] != RUN])
def test_every_page_renders_the_v0_database(v0_url: str, page: str) -> None:
    at = _app(page)
    assert at.title, f"{page} rendered no title"


@pytest.mark.parametrize("page", ["app_pages/compare.py", "app_pages/leaderboard.py"])
def test_v0_runs_are_listed_with_their_numbers(v0_url: str, page: str) -> None:
    text = _shown(_app(page))
    for label in ("gptq", "awq", "wanda + rtn"):
        assert label in text, f"{label!r} missing on {page}"
    assert "42.5" in text  # run 1's perplexity


def test_v0_run_page_shows_metrics_and_layers(v0_url: str) -> None:
    at = _app(RUN, {"run": "1,3"})
    assert at.multiselect(key="run_ids").value == [1, 3]
    assert at.get("plotly_chart"), "no layer chart for stored v0 runs"
    assert "42.5" in _shown(at)
