"""The login gate: who is using this session, from ``COMPRESSLAB_AUTH``.

- ``none`` (default): one person on their own machine. Everything belongs to "local";
  the app serves loopback clients only (config.toml binds 127.0.0.1, and a client from
  elsewhere is refused here too, in case the address was overridden).
- ``password``: users in the database (``python -m workers users add``), a login form,
  a session token kept in ``st.session_state`` and checked against the database (its
  expiry included) on every rerun.
- ``proxy``: an authenticating reverse proxy (oauth2-proxy style) names the user in a
  header (``COMPRESSLAB_PROXY_HEADER``, default ``X-Forwarded-User``), trusted only on
  connections from ``COMPRESSLAB_PROXY_ADDRESSES`` (addresses or networks, default
  loopback).

Outside ``none`` the browser gets no tracebacks (``client.showErrorDetails = "type"``):
errors say what happened without server paths.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

import streamlit as st

from db import queue, users
from db.models import LOCAL_OWNER

AUTH_ENV = "COMPRESSLAB_AUTH"
PROXY_ADDRESSES_ENV = "COMPRESSLAB_PROXY_ADDRESSES"
PROXY_HEADER_ENV = "COMPRESSLAB_PROXY_HEADER"
NONE, PASSWORD, PROXY = "none", "password", "proxy"
MODES = (NONE, PASSWORD, PROXY)
DEFAULT_PROXY_ADDRESSES = "127.0.0.1,::1"
DEFAULT_PROXY_HEADER = "X-Forwarded-User"
_USER, _ADMIN, _TOKEN = "auth_user", "auth_admin", "auth_token"


class AuthConfigError(ValueError):
    """A bad COMPRESSLAB_AUTH setting; the app refuses to serve rather than guess."""


@dataclass(frozen=True)
class Identity:
    name: str
    admin: bool = False


def mode() -> str:
    value = os.environ.get(AUTH_ENV, NONE).strip().lower() or NONE
    if value not in MODES:
        raise AuthConfigError(f"{AUTH_ENV}={value!r}: use one of {', '.join(MODES)}")
    return value


def error_details(auth_mode: str) -> str:
    """Streamlit's ``client.showErrorDetails`` for a mode: tracebacks only locally."""
    return "full" if auth_mode == NONE else "type"


def current_user() -> str:
    """The signed-in user's name ("local" without logins): the owner of what they make."""
    return str(st.session_state.get(_USER) or LOCAL_OWNER)


def current_identity() -> Identity:
    return Identity(current_user(), bool(st.session_state.get(_ADMIN)))


def client_address() -> str | None:
    """The connection's remote address; None for loopback (Streamlit reports it so) or
    where there is no real connection (AppTest)."""
    ip = st.context.ip_address
    return ip if isinstance(ip, str) and ip else None


def proxy_header(name: str) -> str:
    return str(st.context.headers.get(name) or "")


def _in_networks(address: str, spec: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            if ip in ipaddress.ip_network(part, strict=False):
                return True
        except ValueError:
            continue
    return False


def _remember(user: users.User | Identity, token: str | None = None) -> Identity:
    admin = user.admin if isinstance(user, Identity) else user.role == users.ADMIN
    st.session_state[_USER], st.session_state[_ADMIN] = user.name, admin
    if token is not None:
        st.session_state[_TOKEN] = token
    return Identity(user.name, admin)


def _forget() -> None:
    for key in (_USER, _ADMIN, _TOKEN):
        st.session_state.pop(key, None)


def _refuse(message: str) -> None:
    _forget()
    st.title("CompressLab")
    st.error(message, icon=":material/lock:")
    st.stop()


def _local_gate() -> Identity:
    if client_address() is not None:
        _refuse(
            f"This CompressLab has no logins ({AUTH_ENV}=none), so it serves only the "
            f"machine it runs on. To share it, start it with {AUTH_ENV}=password or proxy."
        )
    return _remember(Identity(LOCAL_OWNER))


def _proxy_gate(sf: queue.Factory) -> Identity:
    allowed = os.environ.get(PROXY_ADDRESSES_ENV, DEFAULT_PROXY_ADDRESSES)
    if not _in_networks(client_address() or "127.0.0.1", allowed):
        _refuse("Sign in through the team's proxy: direct connections are not accepted.")
    header = os.environ.get(PROXY_HEADER_ENV, DEFAULT_PROXY_HEADER)
    name = proxy_header(header).strip()
    try:
        return _remember(users.ensure_user(sf, name))
    except users.UserError:
        _refuse(f"The proxy sent no usable user name in {header}.")
    raise AssertionError("unreachable")


def _login_form(sf: queue.Factory) -> None:
    st.title("CompressLab")
    st.caption("Sign in with the account an administrator made for you.")
    with st.form("login"):
        name = st.text_input("User name", max_chars=100, autocomplete="username")
        password = st.text_input(
            "Password",
            type="password",
            max_chars=users.MAX_PASSWORD,
            autocomplete="current-password",
        )
        submitted = st.form_submit_button("Sign in", icon=":material/login:")
    if submitted:
        user = users.authenticate(sf, name.strip(), password)
        if user is None:
            st.error("Wrong user name or password.")
        else:
            _remember(user, users.start_session(sf, user.name))
            st.rerun()
    st.stop()


def _password_gate(sf: queue.Factory) -> Identity:
    user = users.session_user(sf, st.session_state.get(_TOKEN))
    if user is None:
        expired = _TOKEN in st.session_state
        _forget()
        if expired:
            st.info("Your session ended: sign in again.", icon=":material/schedule:")
        _login_form(sf)
    assert user is not None
    return _remember(user)


def gate(sf: queue.Factory) -> Identity:
    """Who uses this session; shows the login form (or a refusal) and stops the script
    until someone is signed in. Call it before ``st.navigation``."""
    try:
        auth_mode = mode()
    except AuthConfigError as e:
        _refuse(str(e))
        raise AssertionError("unreachable") from e
    st.set_option("client.showErrorDetails", error_details(auth_mode))
    if auth_mode == PASSWORD:
        return _password_gate(sf)
    if auth_mode == PROXY:
        return _proxy_gate(sf)
    return _local_gate()


def sign_out(sf: queue.Factory) -> None:
    users.end_session(sf, st.session_state.get(_TOKEN))
    _forget()


def account(sf: queue.Factory) -> None:
    """The sidebar's line about who is signed in, and the sign-out button (password mode)."""
    if mode() == NONE:
        return
    who = current_identity()
    st.caption("Signed in as")
    st.text(f"{who.name}{' (admin)' if who.admin else ''}")
    if mode() == PASSWORD:
        st.button("Sign out", on_click=sign_out, args=(sf,), icon=":material/logout:")
