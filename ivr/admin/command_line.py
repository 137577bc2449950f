"""How `ivr` commands reach a running server's admin API (`ivr queues`, `ivr calls`,
`ivr cache`, `ivr flows publish` ...): the --server and --token options, the client they give,
and the yes asked at a terminal before a change."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from urllib.parse import urlsplit

from ivr.admin.client import AdminClient, AdminError
from ivr.local_tokens import read_local_token
from ivr.settings import Settings


def add_admin_options(parser: argparse.ArgumentParser,
                      actions: argparse._SubParsersAction | None = None,  # type: ignore[type-arg]
                      ) -> None:
    """How a command finds a running server's admin API: before its action or after it
    (`ivr queues --server URL list` and `ivr queues list --server URL`); without `actions`,
    on `parser` alone (`ivr flows publish --server URL`)."""
    choices = actions.choices.values() if actions is not None else ()
    for where, default in ((parser, None), *((a, argparse.SUPPRESS) for a in choices)):
        # SUPPRESS: an action that is not given the option leaves the command's value alone.
        where.add_argument("--server", default=default, help="the server (default: "
                           "IVR_ADMIN_URL, else http://127.0.0.1:8000)")
        where.add_argument("--token", default=default,
                           help="the admin token (default: IVR_ADMIN_TOKEN, else a local "
                           "server's local admin token in IVR_DATA_DIR)")


def admin_client(args: argparse.Namespace, settings: Settings) -> AdminClient:
    """A client with the admin token: --token, else IVR_ADMIN_TOKEN, else the local admin token
    that a server in a local trial made in IVR_DATA_DIR (read, never made here)."""
    server = args.server or settings.admin_url
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AdminError(f"{server!r} is not a server's URL: write it as http://HOST:PORT "
                         "(--server or IVR_ADMIN_URL), e.g. http://127.0.0.1:8000")
    on_this_machine = is_loopback(server)
    token = args.token or (settings.admin_token.get_secret_value() if settings.admin_token
                           else read_local_token(settings.local_admin_token_path)
                           if on_this_machine else None)
    if not token:
        raise AdminError(
            "no admin token: neither --token nor IVR_ADMIN_TOKEN is given, and " + (
                f"there is no local admin token in {settings.local_admin_token_path}. Run this "
                "from the directory where `ivr serve` runs (or set IVR_DATA_DIR to its data "
                "directory), or give the server's IVR_ADMIN_TOKEN." if on_this_machine else
                f"the local admin token is sent only to a server on this machine, not to "
                f"{server}: give that server's IVR_ADMIN_TOKEN."))
    return AdminClient(server, token)


def is_loopback(url: str) -> bool:
    """Whether `url` names this machine (127.0.0.0/8, ::1, localhost): where a local trial's
    server runs, and the only place its local admin token is sent."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False




def confirm(question: str, *, refused: str, asking: str, action: str,
             details: str = "") -> None:
    """Return once the person at the terminal has answered yes to `question` (after reading
    `details`); else raise AdminError(`refused`). Without a terminal nobody can answer, and the
    error says so: `asking` (e.g. "deleting queue 'night'") asks for a yes; to `action` (e.g.
    "delete it") from a script, add --yes."""
    if not sys.stdin.isatty():
        raise AdminError(f"{refused}: {asking} asks for a yes at a terminal; to {action} from a "
                         "script, add --yes")
    print(f"{details}{question}? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline().strip().lower()
    except KeyboardInterrupt:
        answer = ""
        print(file=sys.stderr)  # the next line starts under the question, not after it
    if answer not in ("y", "yes"):
        raise AdminError(refused)


