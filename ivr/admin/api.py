"""The admin API, JSON under /admin/api: queues (read, write, delete), their history and
rollback, published flow versions (publish, rollback), the audit log, recent call traces, and
purges of the fetch cache. Every route needs `Authorization: Bearer <IVR_ADMIN_TOKEN>`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ivr.admin import store_of
from ivr.admin.auth import actor_label, bearer_token_matches
from ivr.admin.changes import (
    InvalidInput,
    field_errors,
    patched_queue,
    queue_from_input,
)
from ivr.admin.openapi import openapi_document
from ivr.admin.outage import StoreUnavailable
from ivr.admin.purges import UnknownTarget, purge, purge_target
from ivr.calltrace import is_sid
from ivr.flow_routes import LiveRoutes
from ivr.flow_versions import FlowsRefused, PinnedVersionMissing, flow_summaries
from ivr.flow_versions import publish as publish_flows
from ivr.flow_versions import rollback as roll_back_flows
from ivr.logs import mask_number
from ivr.queues import MAX_SEARCH_CHARS, changed_fields
from ivr.redis.flow_store import FlowVersion, Published, QueuesChanged, StaleLive
from ivr.redis.queue_store import (
    MUST_EXIST,
    MUST_NOT_EXIST,
    NEVER_MATCHES,
    Busy,
    InvalidChange,
    QueueInUse,
    QueueNotFound,
    QueueRecord,
    StaleVersion,
    Written,
)
from ivr.yamlfile import MAX_YAML_BYTES

if TYPE_CHECKING:
    from ivr.settings import Settings

log = logging.getLogger("ivr.admin")

MAX_BODY_BYTES = 64 * 1024
# A publish carries every flow file, each up to ivr.yamlfile.MAX_YAML_BYTES (a real flow is a
# few kilobytes): room for several files that large, JSON-escaped.
MAX_FLOWS_BODY_BYTES = 8 * 1024 * 1024
MAX_MESSAGE_CHARS = 500
PUBLISH_FIELDS = ("files", "message")
MAX_AUDIT_PAGE = 1000
MAX_QUEUES_PAGE = 1000
# Versions of a queue or of the flows, a page at a time: a page is read and rendered in about a
# millisecond, whatever the number of versions kept (bench/admin_history.py).
HISTORY_PAGE = 50
MAX_HISTORY_PAGE = 500
MAX_CALLS_PAGE = 1000
MAX_OFFSET = 10**9
PURGE_FIELDS = ("flow", "step", "caller")
# A patch without If-Match is applied again on top of a change made meanwhile, this many times.
PATCH_ATTEMPTS = 10

Endpoint = Callable[[Request], Awaitable[Response]]


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def etag(version: int) -> str:
    return f'"v{version}"'


def if_match_version(request: Request) -> str | None:
    """The precondition as the store takes it: None (none), MUST_EXIST (If-Match: *),
    MUST_NOT_EXIST (If-None-Match: *), or the version an ETag names (NEVER_MATCHES for any other
    tag; weak tags never match, as RFC 9110 has it for If-Match)."""
    if request.headers.get("if-none-match", "").strip() == "*":
        return MUST_NOT_EXIST
    header = request.headers.get("if-match")
    if header is None:
        return None
    header = header.strip()
    if header == "*":
        return MUST_EXIST
    tag = header.strip('"')
    return tag[1:] if tag.startswith("v") and tag[1:].isdigit() else NEVER_MATCHES


def record_response(record: QueueRecord, status: int = 200,
                    extra: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({**record.as_dict(), **(extra or {})}, status_code=status,
                        headers={"ETag": etag(record.version)})


def written_response(written: Written) -> JSONResponse:
    """A write's answer: the record now current (201 when the write created the queue) and
    `changed`, the fields it changed; none when the queue already held that content, so
    nothing was written and the record is the current one."""
    return record_response(written.record, 201 if written.created else 200,
                           {"changed": written.changed})


def outcome(written: Written) -> str:
    """What a write did, for the log."""
    if written.created:
        return "created"
    return f"changed ({', '.join(written.changed)})" if written.changed else "unchanged"


def admin_only(endpoint: Endpoint) -> Endpoint:
    """401 unless the request carries the admin token; the store's refusals as HTTP answers.
    (The mount's AdminGuard answers first while the API is disabled or Redis is down.)"""

    async def guarded(request: Request) -> Response:
        if not bearer_token_matches(request.headers.get("authorization"),
                                    request.app.state.admin_token):
            return JSONResponse(
                {"error": "a valid `Authorization: Bearer <admin token>` header is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="ivr-admin"'},
            )
        try:
            return await endpoint(request)
        except InvalidInput as exc:
            return error(422, "invalid input", errors=exc.errors)
        except StaleVersion as exc:
            return error(412, f"If-Match is stale: the current version is {exc.current_version}",
                         current_version=exc.current_version)
        except QueueNotFound as exc:
            return error(404, f"not found: {exc}")
        except MalformedJson as exc:
            return error(400, f"the body is not valid JSON: {exc}")
        except BodyTooLarge as exc:
            return error(413, str(exc))
        except (Busy, QueuesChanged) as exc:
            return error(503, str(exc) or "the queues are changing too fast to check the "
                         "flows against them; try again")

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded


def api_enabled(request: Request) -> bool:
    """Whether the app has an admin token (the API's only credential)."""
    return request.app.state.admin_token is not None


def disabled_answer(request: Request) -> Response:
    return error(404, disabled_reason(request.app.state.settings))


def store_unavailable_answer(request: Request, exc: StoreUnavailable) -> Response:
    log.warning("admin API %s %s: %s", request.method, request.url.path, exc)
    return error(503, str(exc))


def disabled_reason(settings: Settings) -> str:
    """Why the admin API is disabled, and what turns it on (the server makes a local admin token
    only in a local trial: never once TWILIO_AUTH_TOKEN or admin users are set)."""
    if settings.admin_users:
        return ("the admin API is disabled: IVR_ADMIN_USERS sign in to the admin page only; set "
                "IVR_ADMIN_TOKEN on the server for the API")
    return ("the admin API is disabled: set IVR_ADMIN_TOKEN on the server (with "
            "TWILIO_AUTH_TOKEN set, it makes no local admin token)")


def who(request: Request) -> str:
    return actor_label(request.headers.get("x-ivr-actor"), request.app.state.admin_token_name)


async def json_body(request: Request) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise field_errors(f"the body is over {MAX_BODY_BYTES} bytes", "")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise field_errors(f"the body is over {MAX_BODY_BYTES} bytes", "")
    return _parsed(body)


async def large_json_body(request: Request, limit: int) -> Any:
    """The JSON body of a request that may be megabytes (a publish's files), read no further
    than `limit` bytes: BodyTooLarge past it, declared or sent."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return _parsed(b"".join(chunks))


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJson(str(exc)) from None


class MalformedJson(Exception):
    pass


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is over {limit:,} bytes (a flow file may have "
                         f"{MAX_YAML_BYTES:,}); publish fewer or smaller files")


@admin_only
async def list_queues(request: Request) -> Response:
    """The queues by name: those `q` finds, from `offset` on, `limit` of them (every one
    without a limit, as before paging), and how many `q` finds in all (`total`)."""
    query = request.query_params
    search = query.get("q", "").strip()
    try:
        offset = int(query.get("offset", 0))
        limit = int(query["limit"]) if "limit" in query else None
    except ValueError:
        raise field_errors("offset and limit must be integers", "limit") from None
    if not 0 <= offset <= MAX_OFFSET or not (limit is None or 1 <= limit <= MAX_QUEUES_PAGE):
        raise field_errors(f"offset must be 0 to {MAX_OFFSET} and limit 1 to {MAX_QUEUES_PAGE}",
                           "limit")
    if len(search) > MAX_SEARCH_CHARS:
        raise field_errors(f"q must be at most {MAX_SEARCH_CHARS} characters", "q")
    records, total = await store_of(request).records_page(search, offset, limit)
    return JSONResponse({"queues": [record.as_dict() for record in records], "total": total,
                         "offset": offset, "limit": limit})


@admin_only
async def get_queue(request: Request) -> Response:
    name = request.path_params["name"]
    record = await store_of(request).record(name)
    if record is None:
        raise QueueNotFound(f"queue {name!r}")
    return record_response(record)


@admin_only
async def put_queue(request: Request) -> Response:
    name = request.path_params["name"]
    queue = queue_from_input(name, await json_body(request), store_of(request).queue_names())
    try:
        written = await store_of(request).put(name, queue, who(request),
                                              if_match_version(request))
    except InvalidChange as exc:
        raise field_errors(str(exc), "overflow") from None
    log.info("queue %s %s by %s: version %d", name, outcome(written), who(request),
             written.record.version)
    response = written_response(written)
    if written.created:
        response.headers["Location"] = f"/admin/api/queues/{name}"
    return response


@admin_only
async def patch_queue(request: Request) -> Response:
    """Change some of an existing queue's fields, keeping the others (a JSON merge patch, RFC
    7396: a field set to null goes back to its default). Without If-Match, a change made by
    someone else meanwhile is merged with, never overwritten: the patch is applied again on top."""
    name = request.path_params["name"]
    patch = await json_body(request)
    if not isinstance(patch, dict):
        raise field_errors("the body must be a JSON object", "")
    precondition = if_match_version(request)
    store = store_of(request)
    for _ in range(PATCH_ATTEMPTS):
        current = await store.record(name)
        if current is None:
            raise QueueNotFound(f"queue {name!r}")
        queue = patched_queue(name, current.queue, patch, store.queue_names())
        try:
            written = await store.put(name, queue, who(request),
                                      precondition or str(current.version))
        except InvalidChange as exc:
            raise field_errors(str(exc), "overflow") from None
        except StaleVersion:
            if precondition is not None:
                raise
            continue
        log.info("queue %s patched by %s: %s, version %d", name, who(request),
                 outcome(written), written.record.version)
        return written_response(written)
    raise Busy(f"queue {name!r} is changing too fast to patch; try again")


@admin_only
async def delete_queue(request: Request) -> Response:
    name = request.path_params["name"]
    services = request.app.state.services
    try:
        await services.store.delete(name, who(request), LiveRoutes(services.flow_store),
                                    if_match_version(request))
    except QueueInUse as exc:
        return error(409, str(exc))
    log.info("queue %s deleted by %s", name, who(request))
    return Response(status_code=204)


def history_page_query(request: Request) -> tuple[int, int | None]:
    """`?limit=` (default HISTORY_PAGE) and `?before=` (a version: the page ends below it) of a
    history read; 422 naming the parameter for anything else."""
    query = request.query_params
    limit_text, before_text = query.get("limit", str(HISTORY_PAGE)), query.get("before")
    if not is_number(limit_text) or not 1 <= int(limit_text) <= MAX_HISTORY_PAGE:
        raise field_errors(f"limit must be a whole number from 1 to {MAX_HISTORY_PAGE} (default "
                           f"{HISTORY_PAGE})", "limit")
    if before_text is not None and (not is_number(before_text) or not
                                    1 <= int(before_text) <= MAX_OFFSET):
        raise field_errors("before must be a version number (from 1): the page holds the "
                           "versions below it; use the previous page's next_before", "before")
    return int(limit_text), None if before_text is None else int(before_text)


def is_number(text: str) -> bool:
    """Whether `text` is a whole number in ASCII digits (str.isdigit also takes '²')."""
    return text.isascii() and text.isdigit()


@admin_only
async def queue_history(request: Request) -> Response:
    """A page of the queue's versions, newest first, each with what it changed from the one
    below it (null when that one is no longer kept)."""
    name = request.path_params["name"]
    limit, before = history_page_query(request)
    history = await store_of(request).history(name, limit, before)
    if not history.oldest:
        raise QueueNotFound(f"queue {name!r}")
    below = [*history.versions[1:], history.below] if history.versions else []
    return JSONResponse({"name": name, "versions": [
        {**record.as_dict(), "changed": changes_from(previous, record)}
        for record, previous in zip(history.versions, below, strict=True)],
        "next_before": history.next_before, "oldest": history.oldest})


def changes_from(previous: QueueRecord | None, record: QueueRecord) -> list[str] | None:
    """The fields `record` changed from `previous`, the version before it (all, for a first
    version); None when the version before it is no longer kept."""
    if previous is None and record.version > 1:
        return None
    return changed_fields(previous.queue if previous is not None else None, record.queue)


@admin_only
async def rollback_queue(request: Request) -> Response:
    name = request.path_params["name"]
    body = await json_body(request)
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise field_errors("must be a version number (an integer from 1)", "version")
    try:
        written = await store_of(request).rollback(name, version, who(request),
                                                   if_match_version(request))
    except InvalidChange as exc:
        raise field_errors(f"version {version} no longer fits: {exc}", "version") from None
    log.info("queue %s rolled back to version %d by %s: %s, version %d", name, version,
             who(request), outcome(written), written.record.version)
    return written_response(written)


@admin_only
async def audit_log(request: Request) -> Response:
    try:
        offset = int(request.query_params.get("offset", 0))
        limit = int(request.query_params.get("limit", 100))
    except ValueError:
        raise field_errors("offset and limit must be integers", "limit") from None
    if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= MAX_AUDIT_PAGE:
        raise field_errors(f"offset must be 0 to {MAX_OFFSET} and limit 1 to {MAX_AUDIT_PAGE}",
                           "limit")
    entries, total = await store_of(request).audit(offset, limit)
    return JSONResponse({"entries": entries, "total": total, "offset": offset, "limit": limit})


@admin_only
async def recent_calls(request: Request) -> Response:
    """Call traces, newest first: `limit`, one call's (`sid`), or those answered `after` an epoch
    time (what `ivr calls tail --follow` asks for)."""
    query = request.query_params
    try:
        limit = int(query.get("limit", 100))
        after = float(query["after"]) if "after" in query else None
    except ValueError:
        raise field_errors("limit must be an integer and after a number", "limit") from None
    if not 1 <= limit <= MAX_CALLS_PAGE:
        raise field_errors(f"limit must be 1 to {MAX_CALLS_PAGE}", "limit")
    sid = query.get("sid") or None
    if sid is not None and not is_sid(sid):
        raise field_errors("must be a CallSid or MessageSid", "sid")
    calls = await request.app.state.services.traces.recent(limit, sid=sid, after=after)
    return JSONResponse({"calls": calls})


@admin_only
async def purge_cache(request: Request) -> Response:
    """Forget a fetch step's cached answers, one caller's or all, in Redis and in every
    process: `{"flow": ..., "step": ..., "caller": "+15551234567"}` (no caller: all)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise field_errors("the body must be a JSON object", "")
    # A misspelt "caller" must not purge every caller.
    unknown = sorted(set(body) - set(PURGE_FIELDS))
    if unknown:
        raise field_errors(f"unknown field (the fields are {', '.join(PURGE_FIELDS)})",
                           unknown[0])
    for field in ("flow", "step"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise field_errors("is required: a name, as a string", field)
    caller = body.get("caller")
    if caller is not None and not isinstance(caller, str):
        raise field_errors("must be a string: the caller's number, e.g. +15551234567", "caller")
    services = request.app.state.services
    try:
        target = purge_target(services.flows.flows, body["flow"], body["step"])
    except UnknownTarget as exc:
        return error(404, str(exc))
    result = await purge(services, target, caller, who(request))
    caller = mask_number(result["caller"]) if result["caller"] else "every caller"
    log.info("fetch cache of %s/%s purged for %s by %s", result["flow"], result["step"], caller,
             who(request))
    return JSONResponse(result)


# --- flow versions ----------------------------------------------------------------------------

def version_response(version: FlowVersion, live: int, status: int = 200,
                     extra: dict[str, Any] | None = None) -> JSONResponse:
    """A flows version as the API answers it; its ETag when it is the live one (what If-Match
    on a publish or rollback names)."""
    headers = {"ETag": etag(version.version)} if version.version == live else {}
    return JSONResponse({**version.as_dict(), "live": version.version == live, **(extra or {})},
                        status_code=status, headers=headers)


def published_response(request: Request, published: Published, what: str) -> JSONResponse:
    """A publish's or rollback's answer: 201 with the new version, or 200 with the live one
    when it already had that content (nothing written)."""
    version = published.version
    log.info("flows %s by %s: %s", what, who(request),
             f"version {version.version}" if published.created
             else f"unchanged, version {version.version} has that content")
    response = version_response(version, version.version, 201 if published.created else 200,
                                {"created": published.created,
                                 "served": request.app.state.services.flows.version})
    if published.created:
        response.headers["Location"] = f"/admin/api/flows/versions/{version.version}"
    return response


def expected_live(request: Request) -> str:
    """If-Match as the flow store takes it: the live version that must still be live ('' for
    none given, or `*`: a live version exists from the first start on)."""
    precondition = if_match_version(request)
    return "" if precondition in (None, MUST_EXIST) else str(precondition)


def refused(exc: FlowsRefused) -> JSONResponse:
    count = len(exc.problems)
    return error(422, f"the flows were refused ({count} problem{'s' if count != 1 else ''}); "
                 "nothing was published", errors=[
                     {"file": problem.file, "field": problem.field, "message": problem.message}
                     for problem in exc.located])


def stale(exc: StaleLive) -> JSONResponse:
    return error(412, f"If-Match is stale: the live flows version is now {exc.live}",
                 current_version=exc.live)


@admin_only
async def show_live_flows(request: Request) -> Response:
    """The live version (from the store, whatever this process serves), its flows and its
    files' texts."""
    services = request.app.state.services
    live = await services.flow_store.live_version()
    version = await services.flow_store.version(live)
    files = await services.flow_store.files(live)
    if version is None or files is None:
        return error(404, "no flows version is published yet")
    try:
        summaries, problem = flow_summaries(await services.live_flows.pinned(live)), None
    except PinnedVersionMissing as exc:  # the version and its files are still worth seeing
        summaries, problem = None, f"this server cannot load the live flows: {exc}"
    return version_response(version, live, extra={
        "served": services.flows.version, "flows": summaries, "problem": problem,
        "files": files})


@admin_only
async def list_flow_versions(request: Request) -> Response:
    """A page of the flows versions, newest first, the live one marked."""
    limit, before = history_page_query(request)
    store = request.app.state.services.flow_store
    live = await store.live_version()
    versions = await store.versions(limit, before)
    return JSONResponse({"live": live, "versions": [
        {**version.as_dict(), "live": version.version == live}
        for version in versions.versions],
        "next_before": versions.next_before, "oldest": versions.oldest})


@admin_only
async def show_flow_version(request: Request) -> Response:
    store = request.app.state.services.flow_store
    number = request.path_params["version"]
    version = await store.version(int(number)) if number.isdigit() else None
    files = await store.files(version.version) if version is not None else None
    if version is None or files is None:
        missing = (await store.version_missing(int(number)) if number.isdigit()
                   else f"there is no flows version {number}")
        return error(404, f"{missing} (see GET /admin/api/flows/versions)")
    return version_response(version, await store.live_version(), extra={"files": files})


@admin_only
async def publish_flow_version(request: Request) -> Response:
    """Check the files against the live queues and make them the live version: 201, or 200
    when the live version has exactly these files; 422 naming every problem."""
    body = await large_json_body(request, MAX_FLOWS_BODY_BYTES)
    files, message = _publish_input(body)
    services = request.app.state.services
    try:
        published = await publish_flows(services.flow_store, services.store,
                                        services.flow_checks, files, who(request), message,
                                        expected_live=expected_live(request))
    except FlowsRefused as exc:
        return refused(exc)
    except StaleLive as exc:
        return stale(exc)
    await services.live_flows.caught_up(published.version.version, published.flows)
    return published_response(request, published, "published")


def _publish_input(body: Any) -> tuple[dict[str, str], str]:
    if not isinstance(body, dict):
        raise field_errors("the body must be a JSON object: {\"files\": {\"name.yaml\": "
                           "\"...\"}, \"message\": \"...\"}", "")
    unknown = sorted(set(body) - set(PUBLISH_FIELDS))
    if unknown:
        raise field_errors(f"unknown field (the fields are {', '.join(PUBLISH_FIELDS)})",
                           unknown[0])
    files = body.get("files")
    if not isinstance(files, dict) or not files or not all(
            isinstance(text, str) for text in files.values()):
        raise field_errors("is required: an object of file name -> the file's text, at least "
                           "one *.yaml file", "files")
    message = body.get("message", "")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise field_errors(f"must be a string of at most {MAX_MESSAGE_CHARS} characters",
                           "message")
    return files, message.strip()


@admin_only
async def roll_back_flow_version(request: Request) -> Response:
    """Version N's files as a new version (none when they are live already)."""
    body = await json_body(request)
    version = body.get("version") if isinstance(body, dict) else None
    unknown = sorted(set(body) - {"version"}) if isinstance(body, dict) else []
    if unknown:  # a misspelt field must not pass unnoticed
        raise field_errors("unknown field (the field is version)", unknown[0])
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise field_errors("must be a version number (an integer from 1)", "version")
    services = request.app.state.services
    try:
        published = await roll_back_flows(services.flow_store, services.store,
                                          services.flow_checks, version, who(request),
                                          expected_live(request))
    except LookupError as exc:
        return error(404, f"{exc} (see GET /admin/api/flows/versions)")
    except FlowsRefused as exc:
        return refused(exc)
    except StaleLive as exc:
        return stale(exc)
    await services.live_flows.caught_up(published.version.version, published.flows)
    return published_response(request, published, f"rolled back to version {version}")


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


routes = [
    Route("/queues", list_queues, methods=["GET"]),
    Route("/queues/{name}", get_queue, methods=["GET"]),
    Route("/queues/{name}", put_queue, methods=["PUT"]),
    Route("/queues/{name}", patch_queue, methods=["PATCH"]),
    Route("/queues/{name}", delete_queue, methods=["DELETE"]),
    Route("/queues/{name}/history", queue_history, methods=["GET"]),
    Route("/queues/{name}/rollback", rollback_queue, methods=["POST"]),
    Route("/flows", show_live_flows, methods=["GET"]),
    Route("/flows/versions", list_flow_versions, methods=["GET"]),
    Route("/flows/versions", publish_flow_version, methods=["POST"]),
    Route("/flows/versions/{version}", show_flow_version, methods=["GET"]),
    Route("/flows/rollback", roll_back_flow_version, methods=["POST"]),
    Route("/audit", audit_log, methods=["GET"]),
    Route("/calls", recent_calls, methods=["GET"]),
    Route("/cache/purge", purge_cache, methods=["POST"]),
]
