"""Users, roles and login sessions for COMPRESSLAB_AUTH=password (and proxy names).

Passwords are stored as argon2id hashes (argon2-cffi); a login session is a random
token handed to the browser session, of which only the SHA-256 is stored, with an
expiry on the database's clock. ``python -m workers users add|remove|list`` manages
the users (workers/users.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update

from db.clock import db_now
from db.models import ADMIN, LOCAL_OWNER, USER, LoginSession, User
from db.queue import Factory

SESSION_TTL_S = 12 * 3600.0  # a login lasts this long, then the form asks again
MIN_PASSWORD = 8  # characters
MAX_PASSWORD = 1024  # argon2 hashes anything, but a megabyte "password" is an attack
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")  # e-mail addresses fit

_hasher = PasswordHasher()
# Verified against when the user does not exist, so that a wrong name costs as much
# time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash("compresslab-no-such-user")


class UserError(ValueError):
    """A refused user operation; the message says why."""


def check_name(name: str) -> str:
    """``name`` if it is a usable user name, else UserError."""
    if not NAME_RE.fullmatch(name or ""):
        raise UserError(
            "a user name is 1-100 characters: letters, digits and . _ @ + - "
            "(not starting with a symbol)"
        )
    if name == LOCAL_OWNER:
        raise UserError(f"'{LOCAL_OWNER}' is reserved for the owner of runs made without logins")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def verify_password(hashed: str | None, password: str) -> bool:
    """Whether ``password`` matches ``hashed`` (False for a missing or damaged hash)."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher.verify(hashed or _DUMMY_HASH, password) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


def add_user(sf: Factory, name: str, password: str | None, *, admin: bool = False) -> User:
    """Create a user (``password`` None: a proxy-mode user who never types one)."""
    check_name(name)
    hashed = None if password is None else hash_password(password)
    with sf.begin() as s:
        if s.get(User, name) is not None:
            raise UserError(f"user {name!r} exists already")
        user = User(
            name=name, password_hash=hashed, role=ADMIN if admin else USER, created_at=db_now()
        )
        s.add(user)
    return user


def remove_user(sf: Factory, name: str) -> bool:
    """Delete a user and their sessions; their runs keep their name as owner."""
    with sf.begin() as s:
        s.execute(delete(LoginSession).where(LoginSession.user == name))
        return s.execute(delete(User).where(User.name == name)).rowcount == 1


def set_password(sf: Factory, name: str, password: str) -> bool:
    """Change a password; every session of the user ends."""
    hashed = hash_password(password)
    with sf.begin() as s:
        s.execute(delete(LoginSession).where(LoginSession.user == name))
        return (
            s.execute(update(User).where(User.name == name).values(password_hash=hashed)).rowcount
            == 1
        )


def list_users(sf: Factory) -> list[User]:
    with sf() as s:
        return list(s.scalars(select(User).order_by(User.name)))


def get_user(sf: Factory, name: str) -> User | None:
    with sf() as s:
        return s.get(User, name)


def is_admin(sf: Factory, name: str) -> bool:
    user = get_user(sf, name)
    return user is not None and user.role == ADMIN


def ensure_user(sf: Factory, name: str) -> User:
    """The user a trusted proxy named, created (role user, no password) on first sight."""
    user = get_user(sf, check_name(name))
    if user is not None:
        return user
    try:
        return add_user(sf, name, None)
    except UserError:  # another session created it meanwhile
        found = get_user(sf, name)
        if found is None:
            raise
        return found


def authenticate(sf: Factory, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs, else None (same cost for an unknown name)."""
    user = get_user(sf, name) if NAME_RE.fullmatch(name or "") else None
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(sf: Factory, name: str, ttl_s: float = SESSION_TTL_S) -> str:
    """A new login session for ``name``; returns its token (stored only as a hash)."""
    token = secrets.token_urlsafe(32)
    with sf.begin() as s:
        s.execute(delete(LoginSession).where(LoginSession.expires_at < db_now()))
        s.add(
            LoginSession(
                token_hash=_token_hash(token),
                user=name,
                created_at=db_now(),
                expires_at=db_now() + ttl_s,
            )
        )
    return token


def session_user(sf: Factory, token: str | None) -> User | None:
    """The user of an unexpired session token, else None."""
    if not token or len(token) > 200:
        return None
    with sf() as s:
        q = (
            select(User)
            .join(LoginSession, LoginSession.user == User.name)
            .where(LoginSession.token_hash == _token_hash(token))
            .where(LoginSession.expires_at > db_now())
        )
        return s.scalars(q).one_or_none()


def end_session(sf: Factory, token: str | None) -> None:
    if token:
        with sf.begin() as s:
            s.execute(delete(LoginSession).where(LoginSession.token_hash == _token_hash(token)))


__all__ = [
    "ADMIN",
    "SESSION_TTL_S",
    "USER",
    "UserError",
    "add_user",
    "authenticate",
    "end_session",
    "ensure_user",
    "get_user",
    "hash_password",
    "is_admin",
    "list_users",
    "remove_user",
    "session_user",
    "set_password",
    "start_session",
    "verify_password",
]
