"""The `ivr` command: run the server, place signed test calls and messages against it, see the
queues and the recent calls of a running server, and purge its cached lookups."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import getpass
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.dom import minidom

import httpx
import yaml
from twilio.request_validator import RequestValidator

from ivr.addresses import twilio_address
from ivr.admin.auth import resolve_admin_token
from ivr.admin.changes import FieldComparison, compare_queues
from ivr.admin.client import (
    TOKEN_HELP,
    AdminClient,
    AdminError,
    add_page_options,
    admin_client,
    confirm,
    next_page_hint,
    queue_of,
    table,
)
from ivr.app import StartupError, check_store, open_store
from ivr.calltrace import describe_answer
from ivr.channels.voice import DEFAULT_FINISH_ON_KEY, keyed_answer
from ivr.flow_watch import watch_flows
from ivr.flows_cli import add_commands as add_flow_commands
from ivr.local_tokens import read_local_token
from ivr.logs import configure_logging
from ivr.passwords import hash_password
from ivr.redis.client import describe_redis
from ivr.redis.embedded import EmbeddedRedis
from ivr.settings import InvalidSettings, Settings, load_settings
from ivr.simulator import DEFAULT_TO_NUMBER, TEST_ACCOUNT_SID
from ivr.twilio_security import resolve_auth_token
from ivr.workers import serve_workers

log = logging.getLogger("ivr.cli")

DEFAULT_SERVER = "http://127.0.0.1:8000"
# `ivr queues set`'s options for a queue's optional fields (each with --no-... to clear it).
SET_OPTIONS = (  # option, field, metavar, what it sets, what --no-... does
    ("--message-to", "message_to", "NUMBER",
     "E.164 number (or whatsapp:+...) that receives messages", "remove the messaging target"),
    ("--display-name", "display_name", "TEXT", "the queue's name for people",
     "remove the display name"),
    ("--overflow", "overflow", "QUEUE", "the queue whose SIP URIs are dialled after this one's",
     "overflow to no queue"),
)
SET_FIELDS = ("sip_uri", "fallback_sip_uris", *(option[1] for option in SET_OPTIONS))
FOLLOW_INTERVAL = 1.0  # seconds between polls of `ivr calls tail --follow`
# Traces are scored by when they were answered, and a worker writes its own a moment later: a
# follow asks again for this many seconds back and skips what it already printed.
FOLLOW_LOOKBACK = 10.0
FOLLOW_PAGE = 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--watch-flows", action="store_true",
                       help="development only: publish the flows of IVR_FLOWS_DIR whenever a "
                       "flow file changes (as `ivr flows publish` would; broken flows are "
                       "told on stderr and the live version stays)")
    serve.set_defaults(handler=_serve)

    call = commands.add_parser(
        "call", help="send a signed test webhook (a call, or a message) and print the TwiML"
    )
    call.add_argument("number", help="the caller's number, E.164, e.g. +15551234567")
    call.add_argument("--channel", choices=["voice", "messaging"], default="voice")
    call.add_argument("--to", default=DEFAULT_TO_NUMBER,
                      help="the number called (default %(default)s)")
    call.add_argument("--body", default="Hello, I need help with my booking.",
                      help="message text (messaging)")
    call.add_argument("--whatsapp", action="store_true", help="send as a WhatsApp message")
    call.add_argument("--server", default=DEFAULT_SERVER, help="default %(default)s")
    call.add_argument("--input", action="append", default=[], metavar="ANSWER",
                      help="answer the flow's questions, in order: on voice, keys as pressed "
                      "(2, or 12345678# ended by the finish key, sent as Twilio sends them: "
                      "Digits=12345678) or words; on messaging, the next message (repeatable)")
    call.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="an extra webhook parameter (repeatable)")
    call.set_defaults(handler=_call)

    _add_queue_commands(commands)
    _add_call_commands(commands)
    _add_cache_commands(commands)
    add_flow_commands(commands)
    admin = commands.add_parser("admin", help="admin access")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    hash_password = admin_commands.add_parser(
        "hash-password", help="read a password (prompt or stdin) and print its hash for "
        "IVR_ADMIN_USERS")
    hash_password.set_defaults(handler=_hash_password)

    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except InvalidSettings as exc:
        print(f"ivr: {exc}", file=sys.stderr)
        return 2
    try:
        status: int = args.handler(args, settings)
        sys.stdout.flush()  # here, where a closed pipe can be caught, rather than at exit
        return status
    except BrokenPipeError:  # `ivr queues show gold | head -2`: the reader has what it wanted
        # Python flushes stdout again at exit: point it at /dev/null so that flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C at a prompt or mid-command: stop, without a traceback
        print(file=sys.stderr)
        return 130


def _add_queue_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    queues = commands.add_parser(
        "queues", help="see and change the live queues through a running server's admin API")
    actions = queues.add_subparsers(dest="queue_command", required=True)
    actions.add_parser("list", help="every queue and where it sends calls").add_argument(
        "--search", default="", metavar="TEXT",
        help="only the queues with TEXT (any case) in their name, display name, a SIP URI or "
             "messaging address")
    actions.add_parser("show", help="one queue").add_argument("name")
    set_ = actions.add_parser(
        "set", help="change some of a queue's fields, keeping the others (--create: a new queue)",
        description="Change only the fields given; every other field keeps the value it has "
        "when the change arrives, even one someone else changed a moment ago.")
    set_.add_argument("name")
    set_.add_argument("sip_uri", nargs="?", metavar="SIP_URI", default=argparse.SUPPRESS,
                      help="the new SIP URI (optional, except to create a queue)")
    fallback = set_.add_mutually_exclusive_group()
    fallback.add_argument("--fallback", action="append", dest="fallback_sip_uris",
                          metavar="SIP_URI", default=argparse.SUPPRESS,
                          help="a fallback SIP URI (repeatable; replaces the list)")
    fallback.add_argument("--no-fallback", action="store_const", const=[],
                          dest="fallback_sip_uris", default=argparse.SUPPRESS,
                          help="remove every fallback SIP URI")
    for option, field, metavar, value_help, clear_help in SET_OPTIONS:
        choice = set_.add_mutually_exclusive_group()
        choice.add_argument(option, dest=field, metavar=metavar, default=argparse.SUPPRESS,
                            help=value_help)
        choice.add_argument(option.replace("--", "--no-", 1), dest=field, action="store_const",
                            const=None, default=argparse.SUPPRESS, help=clear_help)
    set_.add_argument("--create", action="store_true",
                      help="create the queue if there is none of that name (else refused)")
    delete = actions.add_parser("delete", help="delete a queue (asks first)")
    delete.add_argument("name")
    delete.add_argument("--yes", "-y", action="store_true",
                        help="do not ask (required when not at a terminal)")
    history = actions.add_parser("history", help="a queue's versions, newest first, and what "
                                 "each changed (a page: --limit, --before)")
    history.add_argument("name")
    add_page_options(history)
    rollback = actions.add_parser(
        "rollback", help="make an old version current again (shows what it changes, asks first)")
    rollback.add_argument("name")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--yes", "-y", action="store_true",
                          help="do not ask (required when not at a terminal)")
    export = actions.add_parser("export", help="print the live configuration as queues.yaml")
    export.add_argument("--output", "-o", help="write to this file instead of stdout")
    _add_admin_options(queues, actions)
    queues.set_defaults(handler=_queues)


def _add_admin_options(parser: argparse.ArgumentParser,
                       actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """How a command finds a running server's admin API: before its action or after it
    (`ivr queues --server URL list` and `ivr queues list --server URL`)."""
    for where, default in ((parser, None), *((a, argparse.SUPPRESS)
                                             for a in actions.choices.values())):
        # SUPPRESS: an action that is not given the option leaves the command's value alone.
        where.add_argument("--server", default=default, help="the server (default: "
                           "IVR_ADMIN_URL, else http://127.0.0.1:8000)")
        where.add_argument("--token", default=default, help=TOKEN_HELP)


def _queues(args: argparse.Namespace, settings: Settings) -> int:
    try:
        client = admin_client(args.server, args.token, settings)
        try:
            print(_queue_command(client, args))
        finally:
            client.close()
    except AdminError as exc:
        print(f"ivr: {exc}", file=sys.stderr)
        return 1
    return 0


def _queue_command(client: AdminClient, args: argparse.Namespace) -> str:
    command = args.queue_command
    if command == "list":
        rows = [[q["name"], q["sip_uri"], str(q["version"]), q["updated_by"], q["updated_at"]]
                for q in client.queues(args.search)]
        if not rows and args.search:
            return f"no queue matches {args.search!r}"
        return table(rows, ["QUEUE", "SIP URI", "VERSION", "UPDATED BY", "UPDATED AT"])
    if command == "show":
        return yaml.safe_dump(client.queue(args.name), sort_keys=False).rstrip()
    if command == "set":
        # Only the fields given: an option not given leaves no attribute (SUPPRESS).
        fields = {field: getattr(args, field) for field in SET_FIELDS if hasattr(args, field)}
        if not fields:
            raise AdminError("nothing to change: give a SIP URI or an option such as "
                             "--message-to or --no-overflow (see `ivr queues set --help`)")
        record, created = client.change_queue(args.name, fields, args.create)
        if not record["changed"]:
            return f"{record['name']} unchanged: version {record['version']}"
        verb = "created" if created else "updated"
        return f"{record['name']} {verb}: version {record['version']}, {record['sip_uri']}"
    if command == "delete":
        return _delete_queue(client, args.name, args.yes)
    if command == "history":
        # What each version changed rather than any one field's value: a version that changed
        # only the fallbacks looked like the one before it.
        page = client.history(args.name, args.limit, args.before)
        rows = [[str(v["version"]), v["updated_at"], v["updated_by"],
                 "(the version before is not kept)" if v["changed"] is None
                 else ", ".join(v["changed"]) or "(no field)"] for v in page["versions"]]
        hint = next_page_hint(page, f"ivr queues history {args.name}")
        return "\n".join([table(rows, ["VERSION", "UPDATED AT", "UPDATED BY", "CHANGED"]),
                          *([hint] if hint else [])])
    if command == "rollback":
        return _roll_back(client, args.name, args.version, args.yes)
    text = client.export_yaml()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        return f"wrote {args.output}"
    return text.rstrip()


def _delete_queue(client: AdminClient, name: str, yes: bool) -> str:
    """Delete a queue once the person at the terminal said yes to what it is (or gave --yes)."""
    record = client.queue(name)
    version = record["version"]
    if not yes:
        confirm(f"Delete queue {name} (calls go to {record['sip_uri']}; version {version}, "
                 f"by {record['updated_by']})", refused="not deleted",
                 asking=f"deleting queue {name!r}", action="delete it")
    # Asked, the yes is for the version shown: a change made meanwhile stops the delete.
    client.delete(name, None if yes else version)
    return (f"{name} deleted; its history is kept: `ivr queues rollback {name} {version}` "
            "brings it back")


def _roll_back(client: AdminClient, name: str, version: int, yes: bool) -> str:
    """Make `version` current again once the person at the terminal has seen what that
    changes, field by field, and said yes (or gave --yes)."""
    target = client.queue_version(name, version)
    current = client.find_queue(name)
    fields = compare_queues(queue_of(current) if current is not None else None,
                            queue_of(target))
    if current is not None and not any(field.differs for field in fields):
        return (f"{name} unchanged: version {current['version']} has the values of version "
                f"{version} already")
    if not yes:
        confirm(f"Restore version {version} of {name}", refused="not rolled back",
                 asking=f"restoring version {version} of queue {name!r}", action="roll it back",
                 details=restore_preview(name, target, current, fields))
    # Asked, the yes is for the queue as shown: a change made meanwhile stops the rollback.
    expected = None if yes else current["version"] if current is not None else 0
    record = client.rollback(name, version, expected)
    if current is None:
        return f"{name} re-created from version {version}: now version {record['version']}"
    if not record["changed"]:
        return (f"{name} unchanged: version {record['version']} has the values of version "
                f"{version} already")
    return (f"{name} rolled back to version {version}: now version {record['version']}; "
            f"changed {', '.join(record['changed'])}")


def restore_preview(name: str, target: dict[str, Any], current: dict[str, Any] | None,
                    fields: list[FieldComparison]) -> str:
    """What restoring `target` changes: each field that differs, now → in that version, as
    the page's confirmation shows it, then the fields it leaves as they are."""
    version = target["version"]
    changing = [field for field in fields if field.differs]
    width = max(len(field.field) for field in changing)
    lines = [(f"Version {version} of {name} was saved by {target['updated_by']} at "
              f"{target['updated_at']}.")]
    if current is None:
        lines.append(f"Queue {name} was deleted: restoring version {version} creates it again "
                     "with:")
        lines += [f"  {field.field.ljust(width)}  {field.after}" for field in changing]
    else:
        lines.append(f"Restoring it changes, now (version {current['version']}) → in version "
                     f"{version}:")
        lines += [f"  {field.field.ljust(width)}  {field.before} → {field.after}"
                  for field in changing]
        unchanged = [field.field for field in fields if not field.differs]
        if unchanged:
            lines.append(f"Unchanged: {', '.join(unchanged)}.")
    return "\n".join(lines) + "\n"


def _add_call_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    calls = commands.add_parser(
        "calls", help="recent call traces (steps, fetches, route) from a running server")
    actions = calls.add_subparsers(dest="calls_command", required=True)
    tail = actions.add_parser("tail", help="the latest calls and messages, oldest first")
    tail.add_argument("-n", "--lines", type=int, default=20, metavar="N",
                      help="how many (default %(default)s)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="then print new ones as they come (every second) until Ctrl-C")
    tail.add_argument("--sid", help="only this CallSid or MessageSid")
    tail.add_argument("--json", action="store_true", help="one JSON object a line")
    _add_admin_options(calls, actions)
    calls.set_defaults(handler=_calls)


def _calls(args: argparse.Namespace, settings: Settings) -> int:
    show: Callable[[dict[str, Any]], str] = json.dumps if args.json else describe_call
    try:
        client = admin_client(args.server, args.token, settings)
        try:
            # Following, every recent trace counts as seen, not only the N printed: else the
            # first poll's look back printed older ones after them.
            wanted = FOLLOW_PAGE if args.follow else max(1, min(args.lines, FOLLOW_PAGE))
            recent = client.calls(wanted, sid=args.sid)
            for call in reversed(recent[:max(args.lines, 0)]):
                print(show(call), flush=True)
            if not recent and not args.follow:
                print("ivr: no calls" + (f" for {args.sid}" if args.sid else "") + " yet "
                      "(traces are kept for IVR_TRACE_HOURS)", file=sys.stderr)
            if args.follow:
                _follow_calls(client, args.sid, recent, show)
        finally:
            client.close()
    except AdminError as exc:
        print(f"ivr: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _follow_calls(client: AdminClient, sid: str | None, recent: list[dict[str, Any]],
                  show: Callable[[dict[str, Any]], str]) -> None:
    """Every second, print the traces not printed yet, until Ctrl-C (a server restarting on the
    way is waited for)."""
    seen = {call["id"]: call["answered"] for call in recent}
    newest = max(seen.values(), default=None)
    failing = False
    while True:
        time.sleep(FOLLOW_INTERVAL)
        after = None if newest is None else newest - FOLLOW_LOOKBACK
        try:
            calls = client.calls(FOLLOW_PAGE, sid=sid, after=after)
        except AdminError as exc:
            if not failing:
                print(f"ivr: {exc}; still trying", file=sys.stderr, flush=True)
            failing = True
            continue
        failing = False
        for call in reversed(calls):
            if call["id"] not in seen:
                print(show(call), flush=True)
                seen[call["id"]] = call["answered"]
        newest = max(seen.values(), default=None)
        if newest is not None:
            seen = {id_: at for id_, at in seen.items() if at >= newest - 2 * FOLLOW_LOOKBACK}


def describe_call(call: dict[str, Any]) -> str:
    """One trace on one line: when, which webhook, from whom, what happened, the answer it
    brought, fetches, time."""
    answer = f"; answer at {describe_answer(call['answer'])}" if call.get("answer") else ""
    fetches = "".join(f"; fetch {step}: {_describe_fetch(fetch)}"
                      for step, fetch in call.get("fetches", {}).items())
    return (f"{call['at']} {call['endpoint']} {call['sid']} from {call['from']}: "
            f"{call['summary']}{answer}{fetches} ({call['duration_ms']} ms)")


def _describe_fetch(fetch: dict[str, Any]) -> str:
    """`ok 200 21.3 ms`, then whatever else the fetch recorded (`cache=hit`)."""
    words = [str(fetch.get("outcome"))]
    if fetch.get("status") is not None:
        words.append(str(fetch["status"]))
    if fetch.get("elapsed_ms") is not None:
        words.append(f"{fetch['elapsed_ms']} ms")
    words += [f"{key}={value}" for key, value in fetch.items()
              if key not in ("outcome", "status", "elapsed_ms")]
    return " ".join(words)


def _add_cache_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cache = commands.add_parser(
        "cache", help="purge cached fetch answers (a loyalty lookup) through a running server's "
        "admin API")
    actions = cache.add_subparsers(dest="cache_command", required=True)
    purge = actions.add_parser(
        "purge", help="forget a fetch step's cached answers, one caller's or all, in Redis and "
        "on every instance; audited",
        description="Forget a fetch step's cached answers, so the next call looks the caller up "
        "again: after the data behind a lookup was fixed (a 404 is cached like any answer).")
    purge.add_argument("flow", metavar="FLOW", help="the flow, e.g. loyalty_routing")
    purge.add_argument("step", metavar="STEP", help="its fetch step with `cache`, e.g. lookup")
    purge.add_argument("--caller", metavar="NUMBER",
                       help="only this caller's answers: +15551234567 or whatsapp:+15551234567 "
                       "(default: every caller's)")
    _add_admin_options(cache, actions)
    cache.set_defaults(handler=_cache)


def _cache(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with contextlib.closing(admin_client(args.server, args.token, settings)) as client:
            print(describe_purge(client.purge_cache(args.flow, args.step, args.caller)))
    except AdminError as exc:
        print(f"ivr: {exc}", file=sys.stderr)
        return 1
    return 0


def describe_purge(purged: dict[str, Any]) -> str:
    """What a purge did, in a sentence."""
    step = f"{purged['flow']}/{purged['step']}"
    if purged["caller"] is None:
        return (f"{step}: purged every cached answer on every instance (the step's cache is "
                f"now generation {purged['generation']}); each caller's next call looks up "
                "again")
    removed = purged["removed"]
    if not removed:
        return f"{step}: nothing was cached for {purged['caller']}; nothing to purge"
    answers = "the cached answer" if removed == 1 else f"{removed} cached answers"
    return (f"{step}: purged {answers} for {purged['caller']} on every instance; the "
            "caller's next call looks up again")


def _hash_password(args: argparse.Namespace, settings: Settings) -> int:
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except EOFError:  # Ctrl-D at the prompt
            print("\nivr: no password given", file=sys.stderr)
            return 1
        if again != password:
            print("ivr: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("ivr: use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format, settings.secrets_to_hide())
    taken = _address_in_use(args.host, args.port)
    if taken:  # before anything starts or says it is ready: uvicorn would fail only after
        print(f"ivr: cannot start: {taken}: stop what listens there (another `ivr serve`?), "
              "or choose another port with --port", file=sys.stderr)
        return 2
    # The local tokens a trial needs are made here, once, before any worker races to.
    resolve_auth_token(settings)
    resolve_admin_token(settings)
    embedded = None
    # Until uvicorn's supervisor takes the signals over: SIGTERM exits through `finally`, which
    # stops Redis; a reload asked for now has nothing to do, the workers are yet to be started
    # from what is on disk (by default, SIGHUP would end `ivr serve` without a word).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *_: log.info("SIGHUP while starting: the workers "
                                                     "will start from the files on disk"))
    try:
        if settings.redis_url is None:
            # Started here, once, so that every worker shares it; stopped when serve exits.
            embedded = EmbeddedRedis(settings.data_dir, settings.redis_start_timeout)  # it logs where
            os.environ["IVR_REDIS_URL"] = embedded.start()
            settings = settings.model_copy(update={"redis_url": os.environ["IVR_REDIS_URL"]})
        else:
            log.info("Redis: %s (IVR_REDIS_URL)", describe_redis(settings.redis_url))
        # Check before the workers start what they would refuse (the queues, a seed), so a
        # broken configuration stops `ivr serve` itself with every problem listed, whatever the
        # number of workers. The live flows version is loaded by each worker alone (loading it
        # here too doubled the start with many flows); one it cannot serve is said after.
        asyncio.run(check_store(settings))
    except (StartupError, RuntimeError) as exc:
        print(f"ivr: cannot start: {exc}", file=sys.stderr)
        if embedded is not None:
            embedded.stop()
        return 2
    base = settings.public_url or f"http://{args.host}:{args.port}"
    print(f"ivr: voice webhook {base}/twilio/voice, messaging webhook {base}/twilio/messaging",
          file=sys.stderr)
    if settings.is_local_trial:
        print(f"ivr: admin page {base}/admin: sign in with the local admin token in "
              f"{settings.local_admin_token_path}", file=sys.stderr)
    supervisor = _supervise(embedded) if embedded is not None else None
    watcher = watch_flows(settings) if args.watch_flows else None
    try:
        started = serve_workers(args.host, args.port, args.workers, settings)
        if not started:
            print(f"ivr: cannot start: {_why_workers_did_not_start(settings)}", file=sys.stderr)
            return 2
    finally:
        if watcher is not None:
            watcher.set()
        if supervisor is not None:
            supervisor.set()  # before the stop, which it must not take for a crash
        if embedded is not None:
            embedded.stop()  # at once, even while a restart loads
    return 0


def _address_in_use(host: str, port: int) -> str | None:
    """Why `ivr serve` could not listen on host:port, if something else listens there (None:
    free, or a problem uvicorn will name itself). Bound as uvicorn binds (SO_REUSEADDR)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except OSError:
        return None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"port {port} on {host} is in use"
    return None


def _supervise(embedded: EmbeddedRedis) -> threading.Event:
    """Start the embedded Redis again whenever it exits while `ivr serve` runs; set the event
    returned to stop watching."""
    stop = threading.Event()
    threading.Thread(target=embedded.supervise, args=(stop,), name="ivr-redis-supervisor",
                     daemon=True).start()
    return stop


def _why_workers_did_not_start(settings: Settings) -> str:
    """What stopped the workers' start, found by starting as a worker does here: the live
    flows version, which `ivr serve` leaves to its workers to load, cannot be served here,
    say."""

    async def start_as_a_worker() -> None:
        store, _ = await open_store(settings, compare_draft=False)
        await store.close()

    try:
        asyncio.run(start_as_a_worker())
    except (StartupError, RuntimeError) as exc:
        return str(exc)
    return "a worker did not start; its log above says why"


def test_call_params(args: argparse.Namespace) -> dict[str, str]:
    """The parameters Twilio sends for an inbound call or message, with fresh SIDs."""
    caller = twilio_address(args.number, "caller", args.channel)
    called = twilio_address(args.to, "number called (--to)", args.channel)
    if args.channel == "voice":
        params = {
            "CallSid": "CA" + secrets.token_hex(16),
            "AccountSid": TEST_ACCOUNT_SID,
            "From": caller,
            "To": called,
            "Caller": caller,
            "Called": called,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
    else:
        if args.whatsapp:
            caller, called = f"whatsapp:{caller}", f"whatsapp:{called}"
        sid = "SM" + secrets.token_hex(16)
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "AccountSid": TEST_ACCOUNT_SID,
            "From": caller,
            "To": called,
            "Body": args.body,
            "NumMedia": "0",
            "ApiVersion": "2010-04-01",
        }
    for extra in args.param:
        name, separator, value = extra.partition("=")
        if not separator or not name:
            raise SystemExit(f"ivr: --param takes NAME=VALUE, not {extra!r}")
        params[name] = value
    return params


def _call(args: argparse.Namespace, settings: Settings) -> int:
    """Post the webhook, then, as Twilio would, follow a hold's <Redirect> and post each
    --input as the answer to the flow's question (<Gather>, or the next message)."""
    server = args.server.rstrip("/")
    params = test_call_params(args)
    validator = RequestValidator(_signing_token(settings))
    answers = list(args.input)
    path: str | None = f"/twilio/{args.channel}"
    while path is not None:
        # Sign the URL the server will check: IVR_PUBLIC_URL when set, as Twilio would.
        signature = validator.compute_signature((settings.public_url or server) + path, params)
        try:
            response = httpx.post(server + path, data=params, timeout=20,
                                  headers={"X-Twilio-Signature": signature})
        except httpx.HTTPError as exc:
            print(f"ivr: cannot reach {server}: {exc} (is `ivr serve` running?)",
                  file=sys.stderr)
            return 1
        print(f"HTTP {response.status_code} from POST {server}{path}", file=sys.stderr)
        if response.status_code == 403:
            print("ivr: signature rejected: run `ivr call` with the same TWILIO_AUTH_TOKEN (or "
                  "the same IVR_DATA_DIR, for the local token) and IVR_PUBLIC_URL as the "
                  "server.", file=sys.stderr)
        if not response.headers.get("content-type", "").startswith("text/xml"):
            print(response.text)
            return 1
        print(minidom.parseString(response.content).toprettyxml(indent="  ").strip())
        if response.status_code != 200:
            return 1
        path, params = _next_webhook(ET.fromstring(response.content), args, params, answers)
    if answers:
        print(f"ivr: the flow asked nothing more; unused input: {answers}", file=sys.stderr)
    return 0


def _signing_token(settings: Settings) -> str:
    """TWILIO_AUTH_TOKEN, else the local token a server without it made in IVR_DATA_DIR (read,
    never made here: a token made here is one no server knows); SystemExit when neither is."""
    if settings.twilio_auth_token is not None:
        return settings.twilio_auth_token.get_secret_value()
    token = read_local_token(settings.local_token_path)
    if token is None:
        raise SystemExit(
            f"ivr: nothing to sign with: TWILIO_AUTH_TOKEN is not set and there is no local "
            f"token in {settings.local_token_path}, which `ivr serve` makes as it starts. "
            "Start `ivr serve` here, or run `ivr call` from the directory where it runs (or set "
            "IVR_DATA_DIR to its data directory), or set TWILIO_AUTH_TOKEN to the server's.")
    return token


def _next_webhook(twiml: ET.Element, args: argparse.Namespace, params: dict[str, str],
                  answers: list[str]) -> tuple[str | None, dict[str, str]]:
    """Where Twilio would post next, and with what, after this TwiML; None when it would not."""
    redirect = twiml.find("Redirect")
    if redirect is not None:
        return _local_path(redirect.text or ""), params
    if not answers:
        return None, params
    if args.channel == "messaging":
        if twiml.find("Message") is None:
            return None, params
        sid = "SM" + secrets.token_hex(16)
        return "/twilio/messaging", {**params, "MessageSid": sid, "SmsSid": sid,
                                     "Body": answers.pop(0)}
    gather = twiml.find("Gather")
    if gather is None:
        return None, params
    answer = answers.pop(0)
    following = {k: v for k, v in params.items() if k not in ("Digits", "SpeechResult")}
    if re.fullmatch(r"[0-9*#]+", answer):
        num_digits = gather.get("numDigits")
        finish_on_key = gather.get("finishOnKey", DEFAULT_FINISH_ON_KEY)
        digits, unread = keyed_answer(answer, finish_on_key,
                                      int(num_digits) if num_digits else None)
        if unread and unread != finish_on_key:  # a full answer ended by habit is no news
            print(f"ivr: Twilio stops reading keys at the finish key or numDigits: {unread} "
                  "not sent", file=sys.stderr)
        following["Digits"] = digits
    else:
        following["SpeechResult"] = answer
    return _local_path(gather.get("action", "")), following


def _local_path(url: str) -> str:
    """An action URL as a path on the server (it may be absolute, with IVR_PUBLIC_URL)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")
