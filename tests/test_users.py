"""db/users.py (argon2 hashes, roles, sessions that expire) and the owner checks of
db/queue.py (cancel, delete), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from db import queue, users
from db.models import CANCELLED, QUEUED, RUNNING, SUCCEEDED, LoginSession

pytestmark = pytest.mark.both_backends


def test_a_password_is_stored_as_an_argon2_hash_and_verified() -> None:
    h = users.hash_password("correct horse")
    assert h.startswith("$argon2id$") and "correct horse" not in h
    assert users.verify_password(h, "correct horse")
    assert not users.verify_password(h, "correct hors")
    assert not users.verify_password(None, "correct horse")
    assert not users.verify_password("not a hash", "correct horse")


def test_add_list_remove_and_roles(sf) -> None:
    users.add_user(sf, "alice", "alice-password", admin=True)
    users.add_user(sf, "bob", "bob-password")
    assert [(u.name, u.role) for u in users.list_users(sf)] == [("alice", "admin"), ("bob", "user")]
    assert users.is_admin(sf, "alice") and not users.is_admin(sf, "bob")
    with pytest.raises(users.UserError, match="exists already"):
        users.add_user(sf, "bob", "another-password")
    assert users.remove_user(sf, "bob") and not users.remove_user(sf, "bob")
    assert [u.name for u in users.list_users(sf)] == ["alice"]


@pytest.mark.parametrize("name", ["", "local", "-x", "a b", "x" * 101, "<img>"])
def test_bad_user_names_are_refused(sf, name: str) -> None:
    with pytest.raises(users.UserError):
        users.add_user(sf, name, "long-enough")


def test_short_passwords_are_refused(sf) -> None:
    with pytest.raises(users.UserError, match="8 to 1024"):
        users.add_user(sf, "carol", "short")


def test_authenticate(sf) -> None:
    users.add_user(sf, "alice", "alice-password")
    assert users.authenticate(sf, "alice", "alice-password").name == "alice"
    assert users.authenticate(sf, "alice", "wrong-password") is None
    assert users.authenticate(sf, "nobody", "alice-password") is None
    assert users.authenticate(sf, "' or 1=1 --", "x") is None


def test_sessions_expire_and_end(sf) -> None:
    users.add_user(sf, "alice", "alice-password")
    token = users.start_session(sf, "alice")
    assert users.session_user(sf, token).name == "alice"
    assert users.session_user(sf, token + "x") is None and users.session_user(sf, None) is None
    with sf.begin() as s:  # only the hash is stored
        assert s.get(LoginSession, token) is None
        s.execute(update(LoginSession).values(expires_at=LoginSession.expires_at - 13 * 3600))
    assert users.session_user(sf, token) is None
    token = users.start_session(sf, "alice")
    users.end_session(sf, token)
    assert users.session_user(sf, token) is None


def test_removing_a_user_or_changing_the_password_ends_their_sessions(sf) -> None:
    users.add_user(sf, "alice", "alice-password")
    token = users.start_session(sf, "alice")
    assert users.set_password(sf, "alice", "new-password")
    assert users.session_user(sf, token) is None
    token = users.start_session(sf, "alice")
    users.remove_user(sf, "alice")
    assert users.session_user(sf, token) is None


def test_a_proxy_user_is_created_once_without_a_password(sf) -> None:
    assert users.ensure_user(sf, "dana@example.org").password_hash is None
    assert users.ensure_user(sf, "dana@example.org").role == "user"
    assert users.authenticate(sf, "dana@example.org", "") is None


def _job(sf, owner: str, status: str = QUEUED) -> int:
    job_id = queue.submit(sf, model="m", recipe_label="r", spec_json="{}", owner=owner)
    with sf.begin() as s:
        s.execute(update(queue.Job).where(queue.Job.id == job_id).values(status=status))
    return job_id


def test_jobs_sweeps_and_uploads_record_their_owner(sf) -> None:
    assert (
        queue.get_job(sf, queue.submit(sf, model="m", recipe_label="r", spec_json="{}")).owner
        == "local"
    )
    sweep = queue.submit_sweep(sf, model="m", jobs=[("a", "{}"), ("b", "{}")], owner="bob")
    assert {j.owner for j in queue.sweep_jobs(sf, sweep)} == {"bob"}
    name = queue.store_text(sf, "a.txt", "hello", owner="bob")
    assert queue.get_text(sf, name).owner == "bob"


def test_only_the_owner_or_an_admin_may_cancel(sf) -> None:
    users.add_user(sf, "alice", "alice-password")
    users.add_user(sf, "bob", "bob-password")
    users.add_user(sf, "root", "root-password", admin=True)
    a1, a2, a3 = (_job(sf, "alice", st) for st in (QUEUED, RUNNING, QUEUED))
    assert queue.request_cancel(sf, a1, user="bob").startswith("refused: only alice")
    assert queue.get_job(sf, a1).status == QUEUED and not queue.get_job(sf, a1).cancel_requested
    assert queue.request_cancel(sf, a1, user="alice") == "cancelled"
    assert queue.request_cancel(sf, a2, user="root") == "cancel requested"
    assert queue.request_cancel(sf, a1, user="alice") == "already finished"
    assert queue.request_cancel(sf, 999_999, user="alice") == "no such job"
    assert queue.request_cancel(sf, a3, user="local").startswith("refused")
    job = queue.get_job(sf, a3)
    assert not queue.may_change(sf, job, "bob") and queue.may_change(sf, job, "root")
    assert queue.may_change(sf, job, "alice")


def test_only_the_owner_or_an_admin_may_delete_a_finished_job(sf) -> None:
    users.add_user(sf, "root", "root-password", admin=True)
    done, active = _job(sf, "alice", SUCCEEDED), _job(sf, "alice", RUNNING)
    with sf.begin() as s:
        s.add(queue.LayerStat(job_id=done, name="l", data_json="{}"))
    assert queue.delete_job(sf, done, user="bob").startswith("refused")
    assert queue.delete_job(sf, active, user="alice") == "still active: cancel it first"
    assert queue.delete_job(sf, done, user="root") == "deleted"
    assert queue.get_job(sf, done) is None and queue.layer_stats(sf, done) == []
    assert queue.delete_job(sf, done, user="root") == "no such job"
    assert queue.request_cancel(sf, active, user="alice") == "cancel requested"
    assert queue.get_job(sf, active).status != CANCELLED  # the worker ends it


def test_users_command_through_the_cli(db_url, monkeypatch, capsys) -> None:
    """``python -m workers users ...`` as a person types it: add, list, refuse, remove."""
    import io

    from workers.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass-1\n"))
    assert main(["users", "--db", db_url, "add", "carol", "--admin", "--password-stdin"]) == 0
    assert main(["users", "--db", db_url, "list"]) == 0
    assert "carol" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "--db", db_url, "add", "dave", "--password-stdin"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["users", "--db", db_url, "remove", "carol"]) == 0
    assert main(["users", "--db", db_url, "remove", "carol"]) == 2
