"""A client of a running server's admin API, for `ivr queues ...`, `ivr calls ...` and
`ivr flows validate --server`: changes made from the command line are validated, versioned and
audited exactly like changes made in the web page."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import sys
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import yaml

from ivr.flows.loader import FlowProblem
from ivr.local_tokens import read_local_token
from ivr.queues import Queue
from ivr.settings import Settings

TOKEN_HELP = ("the admin token (default: IVR_ADMIN_TOKEN, else a local server's local admin "
              "token in IVR_DATA_DIR)")


class AdminError(Exception):
    """What went wrong, in words for the person at the terminal; from the API, its HTTP status
    and its own words (`reason`)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "",
                 problems: list[str] | None = None,
                 flow_problems: list[FlowProblem] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.problems = problems or []  # each problem the API named, one line each
        self.flow_problems = flow_problems or []  # those naming a flow file, as named


class AdminClient:
    def __init__(self, server: str, token: str | None, timeout: float = 15.0) -> None:
        if not token:
            raise AdminError("no admin token: set IVR_ADMIN_TOKEN or pass --token")
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}", "X-IVR-Actor": current_user()}
        self._http = httpx.Client(base_url=self.server + "/admin/api", headers=headers,
                                  timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach {self.server}: {exc} (is `ivr serve` running? "
                             "set IVR_ADMIN_URL or pass --server)") from None
        if response.status_code < 400:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text.strip()}
        reason = message = body.get("error", "")
        errors = body.get("errors", [])
        problems = [_problem_line(problem) for problem in errors]
        message += "".join(f"\n  {problem}" for problem in problems)
        if response.status_code == 401:
            message += " (check --token or IVR_ADMIN_TOKEN)"
        raise AdminError(f"{response.status_code}: {message}", response.status_code, reason,
                         problems, [_flow_problem(problem) for problem in errors
                                    if "file" in problem])

    def queues(self, search: str = "") -> list[dict[str, Any]]:
        """Every queue, or those `search` finds (in a name, display name, URI or address)."""
        params = {"q": search} if search else None
        return self._request("GET", "/queues", params=params).json()["queues"]

    def queue(self, name: str) -> dict[str, Any]:
        record = self.find_queue(name)
        if record is None:
            raise self._no_queue(name)
        return record

    def find_queue(self, name: str) -> dict[str, Any] | None:
        """Queue `name`, or None if there is none (now)."""
        try:
            return self._request("GET", f"/queues/{quote(name, safe='')}").json()
        except AdminError as exc:
            if exc.status != 404:
                raise
            return None

    def change_queue(self, name: str, fields: dict[str, Any],
                     create: bool = False) -> tuple[dict[str, Any], bool]:
        """Change only `fields` of queue `name` (None clears one): every other field stays as
        the store has it at that moment, whoever changed it last. A merge patch, never a record
        read and written back whole, which would put back values read before someone else's
        change. With `create`, a queue of that name that does not exist is made from `fields`
        (without it, a mistyped name is refused rather than made). Returns the record and
        whether it was created."""
        path = f"/queues/{quote(name, safe='')}"
        try:
            return self._request("PATCH", path, json=fields).json(), False
        except AdminError as exc:
            if exc.status != 404:
                raise
        if not create:
            raise self._no_queue(name, "to create it, add --create")
        if not fields.get("sip_uri"):
            raise AdminError(f"there is no queue {name!r} yet: to create it, give its SIP URI "
                             f"(ivr queues set {name} sip:{name}@pbx.example.com --create)")
        try:
            # If-None-Match: a queue made meanwhile by someone else is reported, not replaced.
            response = self._request("PUT", path, headers={"If-None-Match": "*"},
                                     json={k: v for k, v in fields.items() if v is not None})
        except AdminError as exc:
            if exc.status != 412:
                raise
            raise AdminError(f"someone else created queue {name!r} meanwhile, so nothing was "
                             f"changed: see it with `ivr queues show {name}`") from None
        return response.json(), True

    def delete(self, name: str, version: int | None = None) -> None:
        """Delete queue `name`; with `version`, only while it is still that version."""
        headers = {"If-Match": f'"v{version}"'} if version is not None else {}
        try:
            self._request("DELETE", f"/queues/{quote(name, safe='')}", headers=headers)
        except AdminError as exc:
            if exc.status == 404:
                raise self._no_queue(name) from None
            if exc.status == 409:
                raise AdminError(f"not deleted: {exc.reason}; change that first") from None
            if exc.status == 412:
                raise changed_while_asked(name, "not deleted") from None
            raise

    def _no_queue(self, name: str, hint: str = "") -> AdminError:
        known = ", ".join(queue["name"] for queue in self.queues())
        return AdminError(f"no queue {name!r} (queues: {known})" + (f"; {hint}" if hint else ""),
                          404)

    def history(self, name: str, limit: int | None = None,
                before: int | None = None) -> dict[str, Any]:
        """A page of queue `name`'s versions, newest first, each with the fields it `changed`:
        `versions`, `next_before` (what `before` gets the next page; None at the last) and
        `oldest` (the oldest version kept)."""
        try:
            return self._request("GET", f"/queues/{quote(name, safe='')}/history",
                                 params=page_params(limit, before)).json()
        except AdminError as exc:
            if exc.status != 404:
                raise
            raise self._no_queue(name) from None

    def queue_version(self, name: str, version: int) -> dict[str, Any]:
        """Version `version` of queue `name` (read alone); a clear error naming the versions
        kept when it is not one of them."""
        page = self.history(name, limit=1, before=version + 1)
        if page["versions"] and page["versions"][0]["version"] == version:
            return page["versions"][0]
        oldest = page["oldest"]
        if 1 <= version < oldest:
            raise AdminError(f"version {version} of queue {name!r} is no longer kept: the "
                             f"oldest kept is {oldest} (see `ivr queues history {name}`)", 404)
        newest = page["versions"][0]["version"] if page["versions"] else oldest
        raise AdminError(f"queue {name!r} has no version {version} (its versions are {oldest} "
                         f"to {newest}: see `ivr queues history {name}`)", 404)

    def rollback(self, name: str, version: int, expected: int | None = None) -> dict[str, Any]:
        """Make `version` of queue `name` current again; answers the record now current, with
        the fields that `changed`. With `expected`, only while the queue is still at that
        version (0: still deleted), so a change made meanwhile stops it."""
        headers = ({} if expected is None else {"If-None-Match": "*"} if expected == 0
                   else {"If-Match": f'"v{expected}"'})
        path = f"/queues/{quote(name, safe='')}/rollback"
        try:
            return self._request("POST", path, json={"version": version},
                                 headers=headers).json()
        except AdminError as exc:
            if exc.status == 412:
                raise changed_while_asked(name, "not rolled back") from None
            raise

    def calls(self, limit: int = 100, sid: str | None = None,
              after: float | None = None) -> list[dict[str, Any]]:
        """Call traces, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if sid:
            params["sid"] = sid
        if after is not None:
            params["after"] = repr(after)
        return self._request("GET", "/calls", params=params).json()["calls"]

    def live_flows(self) -> dict[str, Any]:
        """The live flows version, with its flows and its files."""
        return self._request("GET", "/flows").json()

    def flow_versions(self, limit: int | None = None,
                      before: int | None = None) -> dict[str, Any]:
        """A page of the flows versions, newest first, the live one marked: `versions`,
        `next_before` (None at the last page) and `oldest` (the oldest version kept)."""
        return self._request("GET", "/flows/versions",
                             params=page_params(limit, before)).json()

    def flow_version(self, version: int) -> dict[str, Any]:
        """Flows version `version`, with its files."""
        try:
            return self._request("GET", f"/flows/versions/{version}").json()
        except AdminError as exc:
            if exc.status != 404:
                raise
            raise self._no_flows_version(version) from None

    def _no_flows_version(self, version: int) -> AdminError:
        oldest = self.flow_versions(limit=1)["oldest"]
        if 1 <= version < oldest:
            return AdminError(f"flows version {version} is no longer kept: the oldest kept is "
                              f"{oldest} (see `ivr flows versions`)", 404)
        return AdminError(f"there is no flows version {version} (see `ivr flows versions`)",
                          404)

    def publish_flows(self, files: dict[str, str], message: str,
                      expected_live: int | None = None) -> dict[str, Any]:
        """Publish `files` (name -> text); the version now live, `created` False when it
        already had them. With `expected_live`, only while that version is still live."""
        return self._flows_change("POST", "/flows/versions", {"files": files, "message": message},
                                  expected_live, "not published")

    def roll_back_flows(self, version: int, expected_live: int | None = None) -> dict[str, Any]:
        """Make version `version`'s files live again, as a new version."""
        try:
            return self._flows_change("POST", "/flows/rollback", {"version": version},
                                      expected_live, "not rolled back")
        except AdminError as exc:
            if exc.status != 404:
                raise
            raise self._no_flows_version(version) from None

    def _flows_change(self, method: str, path: str, body: dict[str, Any],
                      expected_live: int | None, refused: str) -> dict[str, Any]:
        headers = {"If-Match": f'"v{expected_live}"'} if expected_live is not None else {}
        try:
            return self._request(method, path, json=body, headers=headers).json()
        except AdminError as exc:
            if exc.status != 412:
                raise
            raise AdminError(f"{refused}: someone published flows meanwhile ({exc.reason}); "
                             "run the command again to see the flows as they are now",
                             412) from None

    def export_yaml(self) -> str:
        """The live configuration in the format of `sip_config/queues.yaml`."""
        queues = {record["name"]: queue_of(record).model_dump(mode="json", exclude_defaults=True)
                  for record in self.queues()}
        return yaml.safe_dump({"queues": queues}, sort_keys=False, allow_unicode=True)

    def purge_cache(self, flow: str, step: str, caller: str | None = None) -> dict[str, Any]:
        """Forget the fetch step's cached answers, the caller's (a number) or all; what the
        server purged."""
        body = {"flow": flow, "step": step, **({"caller": caller} if caller is not None else {})}
        return self._request("POST", "/cache/purge", json=body).json()


def admin_client(server: str | None, token: str | None, settings: Settings) -> AdminClient:
    """A client of `server` (--server, else IVR_ADMIN_URL) with the admin token: `token`
    (--token), else IVR_ADMIN_TOKEN, else the local admin token that a server in a local trial
    made in IVR_DATA_DIR (read, never made here)."""
    server = server or settings.admin_url
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AdminError(f"{server!r} is not a server's URL: write it as http://HOST:PORT "
                         "(--server or IVR_ADMIN_URL), e.g. http://127.0.0.1:8000")
    on_this_machine = _is_loopback(server)
    token = token or (settings.admin_token.get_secret_value() if settings.admin_token
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


def _is_loopback(url: str) -> bool:
    """Whether `url` names this machine (127.0.0.0/8, ::1, localhost): where a local trial's
    server runs, and the only place its local admin token is sent."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def queue_of(record: dict[str, Any]) -> Queue:
    """The queue of a record the API answered (without its version, who and when)."""
    return Queue.model_validate({k: record[k] for k in Queue.model_fields if k in record})


def _problem_line(problem: dict[str, Any]) -> str:
    """A problem the API named, as a line: `file: field: message` (flows), `field: message`."""
    if "file" in problem:
        return str(_flow_problem(problem))
    return f"{problem['field'] or 'body'}: {problem['message']}"


def _flow_problem(problem: dict[str, Any]) -> FlowProblem:
    return FlowProblem(problem["file"], problem["field"], problem["message"])


def changed_while_asked(name: str, refused: str) -> AdminError:
    """A change answered 412: the queue is no longer what the person said yes to."""
    return AdminError(f"{refused}: queue {name!r} changed while you were asked; run the "
                      "command again to see it as it is now")


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


def current_user() -> str:
    """Who runs this command, as the audit log names them ($USER)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def page_params(limit: int | None, before: int | None) -> dict[str, int]:
    """The query of a history read: the server's default page size unless `limit` is given."""
    return {key: value for key, value in (("limit", limit), ("before", before))
            if value is not None}


def next_page_hint(page: dict[str, Any], command: str) -> str | None:
    """The line under a page of versions saying how to see older ones (None at the last)."""
    if page.get("next_before") is None:
        return None
    return f"older versions: {command} --before {page['next_before']}"


def add_page_options(parser: argparse.ArgumentParser) -> None:
    """--limit and --before of a command that lists versions a page at a time."""
    parser.add_argument("--limit", type=positive_number, metavar="N",
                        help="how many versions, newest first (default 50, at most 500)")
    parser.add_argument("--before", type=positive_number, metavar="V",
                        help="only versions older than V (the line under a page names it)")


def positive_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1")
    return int(text)
