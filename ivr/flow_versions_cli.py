"""`ivr flows publish | versions | diff | rollback`: flow versions through a running server's
admin API, validated, versioned and audited exactly like a publish made in the admin page. The
draft is IVR_FLOWS_DIR, read as the server would seed it."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from ivr.admin.client import (
    TOKEN_HELP,
    AdminClient,
    AdminError,
    add_page_options,
    admin_client,
    confirm,
    next_page_hint,
    table,
)
from ivr.flow_versions import unified_diffs
from ivr.flows.loader import FlowLoadError, FlowProblem, read_flow_texts
from ivr.settings import Settings

Command = Callable[[AdminClient, argparse.Namespace, Settings], int]


def add_version_commands(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register publish, versions, diff and rollback under `ivr flows`."""
    publish = actions.add_parser(
        "publish", help="put the flows of IVR_FLOWS_DIR into service on every instance, as a "
        "new version (checked against the live queues first; nothing changes if one is wrong)")
    publish.add_argument("--message", "-m", default="", help="why, for the versions list and "
                         "the audit log")
    versions = actions.add_parser("versions", help="the published flows versions, newest "
                                  "first: number, who, when, message, and which one is live (a "
                                  "page: --limit, --before)")
    add_page_options(versions)
    diff = actions.add_parser(
        "diff", help="what the flows of IVR_FLOWS_DIR change from the live version (or from "
        "version N): a unified diff per file")
    diff.add_argument("version", nargs="?", type=int, metavar="N",
                      help="the version to compare the draft with (default: the live one)")
    diff.add_argument("--exit-code", action="store_true",
                      help="exit with 1 if there are differences, 0 if none, as `git diff "
                      "--exit-code` (2 when the diff cannot be made)")
    rollback = actions.add_parser(
        "rollback", help="put version N's flows back into service, as a new version (prints "
        "what changes, then asks)")
    rollback.add_argument("version", type=int, metavar="N",
                          help="the version whose flows go back into service (see `ivr flows "
                          "versions`)")
    rollback.add_argument("--yes", "-y", action="store_true",
                          help="do not ask (required when not at a terminal)")
    for parser, command in ((publish, _publish), (versions, _versions), (diff, _diff),
                            (rollback, _rollback)):
        parser.add_argument("--server", help="the server (default: IVR_ADMIN_URL, else "
                            "http://127.0.0.1:8000)")
        parser.add_argument("--token", help=TOKEN_HELP)
        parser.set_defaults(handler=_through_admin_api(command))


def _through_admin_api(command: Command) -> Callable[[argparse.Namespace, Settings], int]:
    """`command` with a client of the server's admin API; its errors as one line, exit 1."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            with contextlib.closing(admin_client(args.server, args.token, settings)) as client:
                return command(client, args, settings)
        except AdminError as exc:
            print(f"ivr: {exc}", file=sys.stderr)
            return _failed(args)

    return run


def _failed(args: argparse.Namespace) -> int:
    """The exit status of a command that could not be done: 1, but 2 for `diff --exit-code`,
    whose 1 says the flows differ."""
    return 2 if getattr(args, "exit_code", False) else 1


def _draft(settings: Settings) -> dict[str, str] | None:
    """The flow files of IVR_FLOWS_DIR (None, said on stderr, when there are none to read)."""
    try:
        return read_flow_texts(settings.flows_dir)
    except FlowLoadError as exc:
        for problem in exc.problems:
            print(f"ivr: {problem}", file=sys.stderr)
        return None


def _publish(client: AdminClient, args: argparse.Namespace, settings: Settings) -> int:
    files = _draft(settings)
    if files is None:
        return 1
    try:
        published = client.publish_flows(files, args.message)
    except AdminError as exc:
        if exc.status != 422 or not exc.problems:
            raise
        # Named as `ivr flows validate` names them, so that an editor or grep finds the file.
        _print_refusal(exc, "published", settings.flows_dir)
        return 1
    if not published["created"]:
        print(f"unchanged: the live version {published['version']} has these flows already")
        return 0
    count = len(published["file_names"])
    print(f"published version {published['version']} ({count} file{'s' if count != 1 else ''} "
          f"from {settings.flows_dir}): live now; every instance serves it within a second, and "
          "calls already in a flow finish on the version they started on")
    return 0


def _versions(client: AdminClient, args: argparse.Namespace, settings: Settings) -> int:
    page = client.flow_versions(args.limit, args.before)
    rows = [[str(v["version"]), "live" if v["live"] else "", v["at"], v["who"],
             v["message"] or f"({v['action']})"] for v in page["versions"]]
    print(table(rows, ["VERSION", "LIVE", "PUBLISHED AT", "BY", "MESSAGE"]))
    hint = next_page_hint(page, "ivr flows versions")
    if hint:
        print(hint)
    return 0


def _diff(client: AdminClient, args: argparse.Namespace, settings: Settings) -> int:
    files = _draft(settings)
    if files is None:
        return _failed(args)
    if args.version is None:
        base = client.live_flows()
        label = f"live-v{base['version']}"
    else:
        base = client.flow_version(args.version)
        label = f"v{base['version']}" + ("-live" if base["live"] else "")
    diff = unified_diffs(base["files"], files, label, "draft")
    if not diff:
        print(f"no difference: the flows in {settings.flows_dir} are version {base['version']}"
              + (" (live)" if base["live"] else ""))
        return 0
    print(diff, end="")
    return 1 if args.exit_code else 0


def _rollback(client: AdminClient, args: argparse.Namespace, settings: Settings) -> int:
    target = client.flow_version(args.version)
    live = client.live_flows()
    if target["hash"] == live["hash"]:
        print(f"unchanged: the live version {live['version']} has the flows of version "
              f"{args.version} already")
        return 0
    # What changes is shown whoever answers, a person or --yes in a script's log.
    print(unified_diffs(live["files"], target["files"], f"live-v{live['version']}",
                        f"v{args.version}"), end="", flush=True)
    if not args.yes:
        confirm(f"Put version {args.version}'s flows back into service, as version "
                f"{live['version'] + 1}", refused="not rolled back",
                asking=f"rolling the flows back to version {args.version}",
                action="roll them back")
    try:
        # The yes is for the change shown: a publish made meanwhile stops the rollback.
        published = client.roll_back_flows(args.version, expected_live=live["version"])
    except AdminError as exc:
        if exc.status != 422 or not exc.problems:
            raise
        _print_refusal(exc, "rolled back")
        print(f"ivr: version {args.version}'s flows no longer load as things are now: create "
              "what they name again (a queue: `ivr queues set NAME SIP_URI --create`), or "
              "publish a fix instead (`ivr flows publish`)", file=sys.stderr)
        return 1
    if not published["created"]:
        print(f"unchanged: the live version {published['version']} has the flows of version "
              f"{args.version} already")
        return 0
    print(f"rolled back: version {args.version}'s flows are version {published['version']}, "
          "live now")
    return 0


def _print_refusal(exc: AdminError, undone: str, directory: Path | None = None) -> None:
    """Every problem of a refused publish or rollback on its line (stdout), then what it means
    (stderr); files named in `directory` when they were read from there."""
    problems = ([str(FlowProblem(str(directory / problem.file) if directory and problem.file
                                 else problem.file, problem.field, problem.message))
                 for problem in exc.flow_problems] or exc.problems)
    for problem in problems:
        print(problem)
    count = len(problems)
    print(f"ivr: {count} problem{'s' if count != 1 else ''}: nothing was {undone}; the live "
          "version is unchanged", file=sys.stderr)
