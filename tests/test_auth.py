"""The login gate (ui/auth.py) headless with AppTest, the owner checks on the Runs page,
imports' owner and origin, markdown escaping, query ids, and ``workers users``."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import queue, users
from db.models import QUEUED
from ui import auth, bundle
from ui.shell import RUNS, md_text, query_ids
from workers import users as users_cli

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.both_backends


def _app(monkeypatch, mode: str) -> AppTest:
    monkeypatch.setenv(auth.AUTH_ENV, mode)
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _login(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    at.button[0].click().run()
    return at


def test_password_mode_shows_only_the_login_form_until_signed_in(db_url, sf, monkeypatch):
    users.add_user(sf, "alice", "alice-password")
    at = _app(monkeypatch, "password")
    assert [t.value for t in at.title] == ["CompressLab"] and len(at.text_input) == 2
    assert not at.sidebar.markdown  # no navigation, no queue, nothing before signing in
    _login(at, "alice", "wrong-password")
    assert "Wrong user name or password." in [e.value for e in at.error]
    _login(at, "alice", "alice-password")
    assert not at.exception and at.session_state["auth_user"] == "alice"
    assert "alice" in [t.value for t in at.sidebar.text]
    assert "no worker alive" in "\n".join(m.value for m in at.sidebar.markdown)


def test_an_expired_session_asks_to_sign_in_again(db_url, sf, monkeypatch):
    users.add_user(sf, "alice", "alice-password")
    at = _login(_app(monkeypatch, "password"), "alice", "alice-password")
    users.end_session(sf, at.session_state["auth_token"])  # as if it expired
    at.run()
    assert "Your session ended: sign in again." in [i.value for i in at.info]
    assert len(at.text_input) == 2


def test_none_mode_is_local_with_tracebacks(db_url, monkeypatch):
    at = _app(monkeypatch, "none")
    assert at.session_state["auth_user"] == "local"
    assert auth.error_details("none") == "full"
    assert auth.error_details("password") == auth.error_details("proxy") == "type"


def test_none_mode_refuses_a_remote_client(db_url, monkeypatch):
    monkeypatch.setattr(auth, "client_address", lambda: "10.0.0.7")
    at = _app(monkeypatch, "none")
    assert "serves only the machine it runs on" in at.error[0].value


def test_an_unknown_mode_is_refused(db_url, monkeypatch):
    at = _app(monkeypatch, "pasword")
    assert "use one of none, password, proxy" in at.error[0].value


def test_proxy_mode_trusts_the_header_only_from_the_proxy(db_url, sf, monkeypatch):
    monkeypatch.setenv(auth.PROXY_ADDRESSES_ENV, "10.0.0.0/24")
    monkeypatch.setattr(auth, "proxy_header", lambda name: "dana@example.org")
    monkeypatch.setattr(auth, "client_address", lambda: "10.0.0.5")
    at = _app(monkeypatch, "proxy")
    assert at.session_state["auth_user"] == "dana@example.org"
    assert users.get_user(sf, "dana@example.org").password_hash is None
    monkeypatch.setattr(auth, "client_address", lambda: "192.168.1.9")  # around the proxy
    at = _app(monkeypatch, "proxy")
    assert "Sign in through the team's proxy" in at.error[0].value
    monkeypatch.setattr(auth, "client_address", lambda: "10.0.0.5")
    monkeypatch.setattr(auth, "proxy_header", lambda name: "")
    at = _app(monkeypatch, "proxy")
    assert "no usable user name" in at.error[0].value


def _runs_page_as(monkeypatch, name: str) -> AppTest:
    at = _login(_app(monkeypatch, "password"), name, f"{name}-password")
    at.switch_page(RUNS).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_only_the_owner_or_an_admin_can_cancel_on_the_runs_page(db_url, sf, monkeypatch):
    for name, admin in (("alice", False), ("bob", False), ("root", True)):
        users.add_user(sf, name, f"{name}-password", admin=admin)
    a1, a2 = (
        queue.submit(sf, model="m", recipe_label="r", spec_json="{}", owner="alice") for _ in "ab"
    )
    at = _runs_page_as(monkeypatch, "bob")
    assert "m · r · by alice" in [t.value for t in at.text]
    button = at.button(key=f"cancel{a1}")
    assert button.disabled and "Only alice or an admin" in button.help
    at = _runs_page_as(monkeypatch, "alice")
    at.button(key=f"cancel{a1}").click().run()
    assert queue.get_job(sf, a1).status == "cancelled"
    at.run()
    assert at.dataframe[-1].value["owner"].tolist() == ["alice"]  # the history shows it
    at = _runs_page_as(monkeypatch, "root")
    at.button(key=f"cancel{a2}").click().run()
    assert queue.get_job(sf, a2).status == "cancelled" and queue.get_job(sf, a1).owner == "alice"
    assert QUEUED not in {j.status for j in queue.list_jobs(sf)}


def test_only_own_finished_jobs_are_offered_for_deletion(db_url, sf, monkeypatch):
    users.add_user(sf, "alice", "alice-password")
    mine, theirs = (
        queue.submit(sf, model="m", recipe_label="r", spec_json="{}", owner=o)
        for o in ("alice", "bob")
    )
    for job_id in (mine, theirs):
        queue.request_cancel(sf, job_id, user=queue.get_job(sf, job_id).owner)
    at = _runs_page_as(monkeypatch, "alice")
    at.selectbox(key="hist_open").set_value(theirs).run()
    button = at.button(key=f"del_hist_{theirs}")
    assert button.disabled and "only bob" in button.help  # not alice's: disabled, saying why
    at.selectbox(key="hist_open").set_value(mine).run()
    at.button(key=f"del_hist_{mine}").click().run()
    assert queue.get_job(sf, mine) is None and queue.get_job(sf, theirs) is not None


def _bundle(origin: str, exported_by: str) -> dict:
    fp = {"model": "m", "recipe": [], "device": "cpu"}
    run = {
        "fingerprint": fp,
        "model": "m",
        "recipe_label": "[click](http://evil.example) ![x](http://t.example/p.png)",
        "spec": {},
        "result": {"perplexity": 12.0, "saved_model": "/etc"},
        "origin": origin,
    }
    return {
        "format": bundle.BUNDLE_FORMAT,
        "version": bundle.BUNDLE_VERSION,
        "exported_by": exported_by,
        "runs": [run],
    }


def test_an_import_belongs_to_the_importer_and_never_claims_to_be_local(sf) -> None:
    try:
        rep = bundle.import_bundle(sf, _bundle("local", "local"), owner="bob")
    except bundle.BundleError as e:  # the schema may want more fields: say which
        pytest.fail(str(e))
    job = queue.get_job(sf, rep.added[0])
    assert job.owner == "bob" and job.origin == bundle.UNKNOWN_ORIGIN
    assert "saved_model" not in job.result  # a path on someone else's machine


def test_stored_text_is_escaped_for_markdown() -> None:
    out = md_text("[click](http://e) ![i](http://t) <b>x</b> :red[y] $z$\nnext")
    for raw in ("[click]", "](", "![", "<b>", ":red[", "$z$", "\n"):
        assert raw not in out
    assert md_text("model not found: folder /x") == "model not found: folder /x"
    assert len(md_text("x" * 5000, 100)) == 100


def test_query_ids_are_ascii_and_bounded() -> None:
    assert query_ids("²,12, 3,12,-1,1e3,٣") == [12, 3]
    assert len(query_ids(",".join(map(str, range(100))))) == 20
    assert query_ids("1," * 2000) == []


def _cli(argv: list[str], monkeypatch, db_url: str, stdin: str = "") -> int:
    parser = argparse.ArgumentParser()
    users_cli.add_parser(parser.add_subparsers(dest="cmd", required=True))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    args = parser.parse_args([*argv[:1], "--db", db_url, *argv[1:]])
    return args.func(args)


def test_workers_users_add_list_remove(db_url, sf, monkeypatch, capsys) -> None:
    assert (
        _cli(
            ["users", "add", "alice", "--admin", "--password-stdin"],
            monkeypatch,
            db_url,
            "alice-password\n",
        )
        == 0
    )
    assert "added alice (admin)" in capsys.readouterr().out
    assert users.authenticate(sf, "alice", "alice-password") is not None
    assert _cli(["users", "add", "alice", "--no-password"], monkeypatch, db_url) == 2
    assert capsys.readouterr().err.startswith("error: user 'alice' exists already")
    assert _cli(["users", "add", "bob", "--password-stdin"], monkeypatch, db_url, "short\n") == 2
    assert _cli(["users", "list"], monkeypatch, db_url) == 0
    assert "alice  admin  password" in capsys.readouterr().out
    assert _cli(["users", "remove", "alice"], monkeypatch, db_url) == 0
    assert _cli(["users", "remove", "alice"], monkeypatch, db_url) == 2


def _download_script() -> None:
    import streamlit as st

    from db.models import Job
    from ui.compare_view import saved_model_download

    st.session_state["auth_user"] = st.session_state["who"]
    st.session_state["auth_admin"] = st.session_state["who"] == "root"
    job = Job(id=7, owner="alice", origin="local", result_json=st.session_state["result"])
    saved_model_download(job)


@pytest.mark.parametrize(("who", "offered"), [("alice", True), ("bob", False), ("root", True)])
def test_a_kept_model_is_offered_to_its_owner_or_an_admin(tmp_path, who, offered) -> None:
    from core.save import QUANT_CONFIG

    (tmp_path / QUANT_CONFIG).write_text("{}")
    at = AppTest.from_function(_download_script)
    at.session_state["who"] = who
    at.session_state["result"] = json.dumps({"saved_model": str(tmp_path)})
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert bool(at.get("download_button")) is offered
    if not offered:
        assert "Only alice, who queued this run, or an admin" in at.caption[0].value


def test_a_run_queued_on_new_run_belongs_to_the_signed_in_user(db_url, sf, monkeypatch):
    users.add_user(sf, "alice", "alice-password")
    at = _login(_app(monkeypatch, "password"), "alice", "alice-password")
    at.switch_page("app_pages/new_run.py").run()
    next(b for b in at.button if b.label == "Queue run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    (job,) = queue.list_jobs(sf)
    assert job.owner == "alice"
