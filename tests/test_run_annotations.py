"""Run names, tags, notes and the archive (issue 18): migration 0006 from a database at
0005 keeps every row and gives them no name, no tags and not archived; only the owner or
an admin changes them; on SQLite and PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import inspect, text

from db import migrate, queue, users
from db.models import SUCCEEDED
from db.session import dispose_engine, get_engine, make_engine, session_factory

pytestmark = pytest.mark.both_backends


def _at_0005_with_rows(url: str) -> list[dict]:
    """A database migrated up to 0005 holding two runs written with the 0005 schema."""
    engine = make_engine(url)
    with migrate.locked_connection(engine) as conn:
        command.upgrade(migrate.alembic_config(conn), "0005_import_key")
    with engine.begin() as c:
        for i, owner in ((1, "local"), (2, "alice")):
            c.execute(
                text(
                    "INSERT INTO jobs (id, created_at, status, model, recipe_label, spec_json,"
                    " progress, message, attempts, cancel_requested, origin, owner) VALUES"
                    f" ({i}, 1.0, 'succeeded', 'demo', 'rtn(bits=4)', '{{}}', 1.0, '', 1,"
                    f" false, 'local', '{owner}')"
                )
            )
        if engine.dialect.name == "postgresql":
            c.execute(text("SELECT setval('jobs_id_seq', 2)"))
        rows = [dict(r._mapping) for r in c.execute(text("SELECT * FROM jobs ORDER BY id"))]
    engine.dispose()
    return rows


def test_0005_upgrades_to_0006_with_rows_intact_and_unannotated(db_url: str) -> None:
    before = _at_0005_with_rows(db_url)
    sf = session_factory(db_url)  # upgrades to head
    engine = get_engine(db_url)
    with engine.connect() as c:
        assert migrate.current_revision(c) == migrate.head() == "0006_run_annotations"
        after = [dict(r._mapping) for r in c.execute(text("SELECT * FROM jobs ORDER BY id"))]
    assert [{k: row[k] for k in before[0]} for row in after] == before
    assert {c["name"] for c in inspect(engine).get_columns("jobs")} >= {
        "name",
        "tags",
        "notes",
        "archived",
    }
    jobs = queue.list_jobs(sf)
    assert [(j.name, j.tags, j.notes, j.archived) for j in jobs] == [(None, [], None, False)] * 2
    assert len(queue.list_jobs(sf, archived=False)) == 2
    new = queue.submit(sf, model="m", recipe_label="r", spec_json="{}")
    assert queue.get_job(sf, new).archived is False
    dispose_engine(db_url)


def _done(sf, owner: str = "local") -> int:
    jid = queue.submit(sf, model="demo", recipe_label="rtn", spec_json="{}", owner=owner)
    assert queue.claim(sf, "w", jid) is not None
    assert queue.complete(sf, jid, "w", {"perplexity": 2.5}, [], {"m": 1})
    return jid


def test_name_tags_notes_are_stored_cleaned(sf) -> None:
    jid = _done(sf)
    assert queue.rename_job(sf, jid, "  baseline   4-bit  ") == "saved"
    assert queue.set_tags(sf, jid, "Paper, ablation ,paper,, ") == "saved"
    assert queue.set_notes(sf, jid, " first try\n") == "saved"
    job = queue.get_job(sf, jid)
    assert (job.name, job.tags, job.notes) == ("baseline 4-bit", ["paper", "ablation"], "first try")
    assert json.loads(job.tags_json) == ["paper", "ablation"]
    assert queue.rename_job(sf, jid, "") == "saved" and queue.get_job(sf, jid).name is None
    assert queue.set_tags(sf, jid, []) == "saved" and queue.get_job(sf, jid).tags == []
    with pytest.raises(queue.AnnotationError, match="at most 200"):
        queue.rename_job(sf, jid, "x" * 201)
    with pytest.raises(queue.AnnotationError, match="longer than"):
        queue.set_tags(sf, jid, ["y" * 41])
    assert queue.rename_job(sf, 999_999, "x") == "no such job"


def test_archive_hides_and_restore_brings_back(sf) -> None:
    a, b = _done(sf), _done(sf)
    assert queue.archive_job(sf, a) == "saved"
    assert [j.id for j in queue.list_jobs(sf, archived=False)] == [b]
    assert [j.id for j in queue.list_jobs(sf, archived=True)] == [a]
    assert {j.id for j in queue.list_jobs(sf)} == {a, b}
    assert queue.restore_job(sf, a) == "saved"
    assert {j.id for j in queue.list_jobs(sf, archived=False)} == {a, b}
    active = queue.submit(sf, model="demo", recipe_label="rtn", spec_json="{}")
    assert queue.archive_job(sf, active) == "still active: cancel it first"
    assert queue.get_job(sf, a).status == SUCCEEDED


def test_only_the_owner_or_an_admin_annotates(sf) -> None:
    users.add_user(sf, "alice", "correct horse battery")
    users.add_user(sf, "bob", "correct horse battery")
    users.add_user(sf, "root", "correct horse battery", admin=True)
    jid = _done(sf, owner="alice")
    for change in (
        lambda u: queue.rename_job(sf, jid, "bob's", user=u),
        lambda u: queue.set_tags(sf, jid, ["x"], user=u),
        lambda u: queue.set_notes(sf, jid, "x", user=u),
        lambda u: queue.archive_job(sf, jid, user=u),
        lambda u: queue.delete_job(sf, jid, user=u),
    ):
        assert change("bob").startswith("refused: only alice")
    job = queue.get_job(sf, jid)
    assert (job.name, job.tags, job.notes, job.archived) == (None, [], None, False)
    assert queue.rename_job(sf, jid, "mine", user="alice") == "saved"
    assert queue.archive_job(sf, jid, user="root") == "saved"
    assert queue.restore_job(sf, jid, user="alice") == "saved"
    assert queue.delete_job(sf, jid, user="root") == "deleted"


def test_annotate_checks_everything_before_writing(sf) -> None:
    jid = _done(sf)
    with pytest.raises(queue.AnnotationError):
        queue.annotate(sf, jid, "kept?", ["z" * 41], "n")
    assert queue.get_job(sf, jid).name is None  # nothing written
    assert queue.annotate(sf, jid, "int4 g128", "a, b", "n") == "saved"
    job = queue.get_job(sf, jid)
    assert (job.name, job.tags, job.notes) == ("int4 g128", ["a", "b"], "n")


def test_bundles_carry_names_tags_notes_and_uploaded_texts(sf, tmp_path) -> None:
    from ui import bundle

    text = "def f():\n    return 42\n" * 10
    upload = queue.store_text(sf, "mine.txt", text)
    spec = json.dumps({"calib": upload, "recipe": [{"method": "rtn", "bits": 4}]})
    jid = queue.submit(sf, model="demo", recipe_label="rtn", spec_json=spec)
    assert queue.claim(sf, "w", jid) is not None
    assert queue.complete(sf, jid, "w", {"perplexity": 2.5}, [], {"m": 1, "calib": upload})
    assert queue.annotate(sf, jid, "int4", "paper", "first") == "saved"
    job = queue.get_job(sf, jid)
    assert bundle.uploads_of([job]) == [upload]
    blob = queue.get_text(sf, upload)
    made = bundle.make_bundle([job], None, origin="alice@box", texts=[blob])
    (rec,) = made["texts"]
    assert (rec["filename"], rec["n_bytes"], rec["text"]) == ("mine.txt", len(text), text)
    assert made["runs"][0]["name"] == "int4" and made["runs"][0]["tags"] == ["paper"]
    lean = bundle.make_bundle([job], None, origin="alice@box", texts=[blob], with_text=False)
    assert "text" not in lean["texts"][0] and lean["texts"][0]["sha256"] == blob.sha256

    other = session_factory(f"sqlite:///{tmp_path / 'teammate.db'}")  # a teammate's database
    report = bundle.import_bundle(other, bundle.bundle_bytes(made), owner="bob")
    (new,) = report.added
    got = queue.get_job(other, new)
    assert (got.name, got.tags, got.notes) == ("int4", ["paper"], "first")
    assert report.texts == [upload] and queue.get_text(other, upload).text == text
    made["runs"][0]["tags"] = ["x" * 99]
    with pytest.raises(bundle.BundleError, match="tags"):
        bundle.parse_bundle(made)
