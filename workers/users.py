"""``python -m workers users add|remove|list``: the logins of COMPRESSLAB_AUTH=password.

``add NAME [--admin]`` asks for the password twice on the terminal, or reads one line
from standard input with ``--password-stdin``; ``--no-password`` makes a user that only
a trusted proxy (COMPRESSLAB_AUTH=proxy) can sign in, useful to give it the admin role.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from db import users
from db.session import default_url, session_factory


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``users`` (add | remove | list) on the CLI's subparsers."""
    p = subparsers.add_parser("users", help="manage logins (COMPRESSLAB_AUTH=password)")
    p.add_argument("--db", default=None, help="database URL (default: DATABASE_URL)")
    sub = p.add_subparsers(dest="users_command", required=True)
    add = sub.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may cancel and delete any job")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    how.add_argument("--no-password", action="store_true", help="proxy sign-in only")
    rm = sub.add_parser("remove", help="delete a user and end their sessions")
    rm.add_argument("name")
    sub.add_parser("list", help="every user and role")
    p.set_defaults(func=run_users)


def _password(args: argparse.Namespace) -> str | None:
    if args.no_password:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise users.UserError("the two passwords differ")
    return first


def _add(sf: users.Factory, args: argparse.Namespace) -> str:
    user = users.add_user(sf, args.name, _password(args), admin=args.admin)
    return f"added {user.name} ({user.role})"


def _remove(sf: users.Factory, args: argparse.Namespace) -> str:
    if not users.remove_user(sf, args.name):
        raise users.UserError(f"no user {args.name!r}")
    return f"removed {args.name} (their runs keep their name as owner)"


def _list(sf: users.Factory, _args: argparse.Namespace) -> str:
    rows = users.list_users(sf)
    if not rows:
        return "no users (add one: python -m workers users add NAME --admin)"
    width = max(len(u.name) for u in rows)
    return "\n".join(
        f"{u.name:<{width}}  {u.role:<5}  {'password' if u.password_hash else 'proxy only'}"
        for u in rows
    )


def run_users(args: argparse.Namespace) -> int:
    """The handler: prints one line per result; bad input exits 2 with ``error:``."""
    action = {"add": _add, "remove": _remove, "list": _list}[args.users_command]
    sf = session_factory(args.db or default_url())
    try:
        print(action(sf, args))
    except users.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
