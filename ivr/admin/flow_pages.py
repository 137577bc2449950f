"""The admin page's *Flows* section: the live flows version and its flows (numbers, channels, the
queues each routes to, a drawing of its steps, laid out by ivr.admin.flow_graph), every published version, a diff between any two,
and rolling back to a version after seeing what it changes.

Publishing is the CLI's and the API's (`ivr flows publish`); the page reads the flow store and
rolls back through ivr.flow_versions, as they do, so a rollback here is checked against the live
queues, versioned and audited the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ivr.admin.auth import AdminSession
from ivr.admin.flow_graph import flow_drawing
from ivr.admin.pages import (
    message_page,
    number,
    page,
    redirect,
    sentence,
    signed_in,
    templates,
)
from ivr.flow_versions import (
    FlowsRefused,
    PinnedVersionMissing,
    changed_files,
    flow_summaries,
    rollback,
    unified_diffs,
)
from ivr.flows.loader import FlowSet
from ivr.redis.flow_store import FlowVersion, QueuesChanged, StaleLive
from ivr.services import Services

VERSIONS_PAGE_SIZE = 50  # flows versions on the Flows page; "Older" links to the next
log = logging.getLogger("ivr.admin")

DiffLineKind = Literal["file", "hunk", "added", "removed", "context", "note"]


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified diff as the page marks it: a sign and words, not colour alone."""

    kind: DiffLineKind
    text: str


def diff_lines(diff: str) -> list[DiffLine]:
    """A unified diff's lines, each with what it is (a file's header, a hunk's, a line added,
    removed or unchanged, a note such as `\\ No newline at end of file`)."""
    lines = []
    for line in diff.splitlines():
        kind: DiffLineKind
        if line.startswith(("--- ", "+++ ")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "added"
        elif line.startswith("-"):
            kind = "removed"
        elif line.startswith("\\"):
            kind = "note"
        else:
            kind = "context"
        lines.append(DiffLine(kind, line))
    return lines


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def live_flows(services: Services, live: int) -> FlowSet:
    """The flows of the live version `live`: this process's, unless it has not switched to it
    yet (a publish a moment ago), then read from the store. Raises PinnedVersionMissing."""
    return await services.live_flows.pinned(live)


def _notice(request: Request) -> str | None:
    """The confirmation a redirect after a rollback asked for (numbers only: no text injected)."""
    query = request.query_params
    version = number(query.get("version"))
    if version is None:
        return None
    restored = number(query.get("rolled_back"))
    if restored is not None:
        return f"Rolled the flows back to version {restored}: it is now live as version {version}."
    same = number(query.get("same_as"))
    if same is not None:
        return (f"Nothing to roll back: version {same} has the flows that are live now. Version "
                f"{version} is still live.")
    return None


@signed_in
async def flows_page(request: Request, session: AdminSession) -> Response:
    services = services_of(request)
    store = services.flow_store
    before = number(request.query_params.get("before"))
    live = await store.live_version()
    meta, versions = await store.version(live), await store.versions(VERSIONS_PAGE_SIZE, before)
    if meta is None:
        return message_page(request, session, 503, "No live flows version",
                            "The store has no live flows version yet: a server seeds it from "
                            "its flows directory when it starts, or run `ivr flows publish`.")
    flows, unavailable = None, None
    try:
        flows = await live_flows(services, live)
    except PinnedVersionMissing as exc:
        unavailable = str(exc)
    summaries = []
    if flows is not None:
        by_name = {flow.name: flow for flow in flows.flows.values()}
        summaries = [{**summary, "drawing": flow_drawing(by_name[summary["name"]])}
                     for summary in flow_summaries(flows)]
    return page(request, "flows.html", session, live=meta, flows=summaries,
                unavailable=unavailable, versions=versions.versions, before=before,
                older=versions.next_before, notice=_notice(request))


@signed_in
async def flows_diff(request: Request, session: AdminSession) -> Response:
    """Version `from` against version `to` (the live version unless given), a diff per file."""
    store = services_of(request).flow_store
    live = await store.live_version()
    old_version = number(request.query_params.get("from"))
    new_version = number(request.query_params.get("to") or str(live))
    if old_version is None or new_version is None:
        return message_page(request, session, 422, "Which versions?",
                            "That diff link is incomplete: choose two versions on the Flows "
                            "page.")
    old, new = await store.files(old_version), await store.files(new_version)
    missing = [str(version) for version, files in ((old_version, old), (new_version, new))
               if files is None]
    if old is None or new is None:
        return message_page(request, session, 404, "No such version",
                            f"There is no flows version {' or '.join(missing)}.")
    return page(request, "flows_diff.html", session, old=old_version, new=new_version, live=live,
                files=changed_files(old, new),
                lines=diff_lines(unified_diffs(old, new, label(old_version, live),
                                               label(new_version, live))))


def label(version: int, live: int) -> str:
    """How a diff names a side: `v7`, or `v7 (live)`."""
    return f"v{version} (live)" if version == live else f"v{version}"


@signed_in
async def confirm_flows_rollback(request: Request, session: AdminSession) -> Response:
    """What rolling back to a version would change, with the button that does it: nothing is
    written until the admin has seen it."""
    target = number(request.query_params.get("version"))
    if target is None:
        return message_page(request, session, 422, "Which version?",
                            "That rollback link is incomplete: use the links on the Flows page.")
    return await rollback_page(request, session, target)


async def rollback_page(request: Request, session: AdminSession, target: int, *,
                        alert: str | None = None, problems: list[str] | None = None,
                        status: int = 200) -> Response:
    """The confirmation of a rollback: what differs between the live version and `target`."""
    store = services_of(request).flow_store
    live = await store.live_version()
    meta, old = await store.version(target), await store.files(target)
    current, live_files = await store.version(live), await store.files(live)
    if meta is None or old is None or current is None or live_files is None:
        return message_page(request, session, 404, "No such version",
                            sentence(await store.version_missing(target)))
    return page(request, "flows_rollback.html", session, status, target=meta, live=current,
                files=changed_files(live_files, old),
                lines=diff_lines(unified_diffs(live_files, old, label(live, live),
                                               label(target, live))),
                alert=alert, problems=problems or [])


@signed_in
async def rollback_flows(request: Request, session: AdminSession) -> Response:
    """Make a version's flows live again, as a new version, if the live version is still the
    one the confirmation showed and the flows still fit the live queues."""
    form = await request.form()
    target, read_at = number(form.get("version")), number(form.get("current"))
    if target is None or read_at is None:
        return message_page(request, session, 422, "Incomplete form",
                            "That rollback form is incomplete: use the links on the Flows page.")
    if form.get("confirmed") != "1":  # a form that did not show what changes asks first
        return await rollback_page(request, session, target)
    services = services_of(request)
    try:
        published = await rollback(services.flow_store, services.store, services.flow_checks,
                                   target, session.user, expected_live=str(read_at))
    except LookupError as exc:
        return message_page(request, session, 404, "No such version", sentence(exc))
    except StaleLive as exc:
        return await rollback_page(
            request, session, target, status=409,
            alert=f"Someone published flows version {exc.live} since this page was shown, so "
                  f"nothing was rolled back. Below is what rolling back would change now: "
                  f"confirm again, or cancel.")
    except FlowsRefused as exc:
        return await rollback_page(
            request, session, target, status=422, problems=exc.problems,
            alert=f"Version {target} cannot be rolled back to: its flows no longer fit the live "
                  f"queues, so nothing changed. Fix what is listed below with a new publish "
                  f"(`ivr flows publish`), or change the queues.")
    except QueuesChanged:
        return message_page(request, session, 503, "Too many changes at once",
                            "The queues kept changing while checking the flows against them, so "
                            "nothing was rolled back. Go back and try again.")
    version = published.version.version
    # This process serves it at once, as after a publish through the API.
    await services.live_flows.caught_up(version)
    if not published.created:
        return redirect(request, "admin_flows", {"same_as": target, "version": version})
    log.info("admin page: flows rolled back to version %d by %s: version %d", target,
             session.user, version)
    return redirect(request, "admin_flows", {"rolled_back": target, "version": version})


def version_action(version: FlowVersion) -> str:
    """What made a version, in words: `published`, `rolled back to version 2`, `seeded`."""
    if version.action == "rollback" and version.rolled_back_to is not None:
        return f"rolled back to version {version.rolled_back_to}"
    return {"seed": "seeded from files", "publish": "published"}.get(version.action,
                                                                       version.action)


templates.env.filters["made_by"] = version_action

routes = [
    Route("/flows", flows_page, methods=["GET"], name="admin_flows"),
    Route("/flows/diff", flows_diff, methods=["GET"], name="admin_flows_diff"),
    Route("/flows/rollback", confirm_flows_rollback, methods=["GET"],
          name="admin_confirm_flows_rollback"),
    Route("/flows/rollback", rollback_flows, methods=["POST"], name="admin_flows_rollback"),
]
