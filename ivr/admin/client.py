"""A client of a running server's admin API, for `ivr queues ...` and `ivr calls ...`: changes
made from the command line are validated, versioned and audited exactly like changes made in the
web page."""

from __future__ import annotations

import getpass
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from ivr.queues import Queue


class AdminError(Exception):
    """What went wrong, in words for the person at the terminal."""


class AdminClient:
    def __init__(self, server: str, token: str | None, timeout: float = 15.0) -> None:
        if not token:
            raise AdminError("no admin token: set IVR_ADMIN_TOKEN or pass --token")
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}", "X-IVR-Actor": _user()}
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
        message = body.get("error", "")
        for problem in body.get("errors", []):
            message += f"\n  {problem['field'] or 'body'}: {problem['message']}"
        if response.status_code == 401:
            message += " (check IVR_ADMIN_TOKEN)"
        raise AdminError(f"{response.status_code}: {message}")

    def queues(self) -> list[dict[str, Any]]:
        return self._request("GET", "/queues").json()["queues"]

    def queue(self, name: str) -> tuple[dict[str, Any], str]:
        response = self._request("GET", f"/queues/{quote(name, safe='')}")
        return response.json(), response.headers["etag"]

    def set_sip_uri(self, name: str, sip_uri: str, create: bool = False,
                    **fields: Any) -> tuple[dict[str, Any], bool]:
        """Change a queue's SIP URI (and any `fields` given), keeping its other fields; with
        `create`, create the queue if it does not exist (a mistyped name must not make a new
        queue). Returns the new record and whether it was created."""
        try:
            current, tag = self.queue(name)
        except AdminError as exc:
            if not str(exc).startswith("404"):
                raise
            if not create:
                known = ", ".join(queue["name"] for queue in self.queues())
                raise AdminError(f"no queue {name!r} (queues: {known}); to create it, add "
                                 "--create") from None
            current, tag = {}, None
        body = {**current, **{k: v for k, v in fields.items() if v is not None},
                "sip_uri": sip_uri}
        # A change made by someone else meanwhile (or a queue created meanwhile) is reported,
        # never overwritten.
        headers = {"If-Match": tag} if tag else {"If-None-Match": "*"}
        response = self._request("PUT", f"/queues/{quote(name, safe='')}", json=body,
                                 headers=headers)
        return response.json(), response.status_code == 201

    def history(self, name: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/queues/{quote(name, safe='')}/history").json()["versions"]

    def rollback(self, name: str, version: int) -> dict[str, Any]:
        path = f"/queues/{quote(name, safe='')}/rollback"
        return self._request("POST", path, json={"version": version}).json()

    def calls(self, limit: int = 100, sid: str | None = None,
              after: float | None = None) -> list[dict[str, Any]]:
        """Call traces, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if sid:
            params["sid"] = sid
        if after is not None:
            params["after"] = repr(after)
        return self._request("GET", "/calls", params=params).json()["calls"]

    def export_yaml(self) -> str:
        """The live configuration in the format of `sip_config/queues.yaml`."""
        queues = {}
        for record in self.queues():
            fields = {k: record[k] for k in Queue.model_fields if k in record}
            queues[record["name"]] = Queue.model_validate(fields).model_dump(
                mode="json", exclude_defaults=True)
        return yaml.safe_dump({"queues": queues}, sort_keys=False, allow_unicode=True)

    def purge_cache(self, flow: str, step: str, caller: str | None = None) -> dict[str, Any]:
        """Forget the fetch step's cached answers, the caller's (a number) or all; what the
        server purged."""
        body = {"flow": flow, "step": step, **({"caller": caller} if caller is not None else {})}
        return self._request("POST", "/cache/purge", json=body).json()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)
