"""The admin web page under /admin, for people who are not developers: sign in, see where each
queue sends calls, edit a queue, roll back to an earlier version, read the audit log, see the
recent calls.

Plain server-rendered HTML forms, and one small script of our own (static/local-time.js) that
shows times in the browser's time zone: every page works without it. Sign-in sessions live in
Redis (shared by every instance) and end as soon as their user or token is no longer configured;
every form posts the session's CSRF token, and the sign-in form a double-submit token. Sign-in
attempts are throttled (per user name and per client address, in Redis) and at most
PASSWORD_CHECKS_AT_ONCE password hashes are computed at once, so guessing cannot starve call
handling of CPU.
Writes go through the store like the admin API's, so they are validated, versioned and audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ivr.admin import store_of
from ivr.admin.auth import (
    MAX_ACTOR_LENGTH,
    AdminSession,
    SessionStore,
    tokens_match,
)
from ivr.admin.changes import (
    InvalidInput,
    compare_queues,
    patched_queue,
    queue_from_input,
    shown,
)
from ivr.admin.outage import StoreUnavailable
from ivr.calltrace import describe_answer, is_sid
from ivr.flow_routes import LiveRoutes, RoutesUnknown, flows_in_words, queue_routes
from ivr.passwords import verify_password
from ivr.queues import MAX_SEARCH_CHARS, Queue
from ivr.redis.queue_store import (
    MUST_NOT_EXIST,
    NEVER_MATCHES,
    RECORD_META,
    Busy,
    InvalidChange,
    QueueNotFound,
    QueueRecord,
    QueueStore,
    StaleVersion,
    VersionNotKept,
)

log = logging.getLogger("ivr.admin")

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "ivr_admin_session"
LOGIN_COOKIE = "ivr_admin_login"
SESSION_ENDED = ("Your session has ended: it expired, or the operator changed the admin token, "
                 "your user or your password. Please sign in again.")
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20
AUDIT_PAGE_SIZE = 50
QUEUES_PAGE_SIZE = 50
HISTORY_PAGE_SIZE = 50  # a queue's versions on its page; "Older" links to the next
# A save refused by someone else's change names who changed each field from the versions
# between; past this many (a form left open all day under an automated change a minute), the
# newest of them.
MAX_VERSIONS_COMPARED = 500
CALLS_PAGE_SIZE = 100
MAX_NUMBER_DIGITS = 12  # of a number in a form or query: more is nonsense, not a version
PASSWORD_CHECKS_AT_ONCE = 2  # PBKDF2 runs per process; more sign-ins wait their turn
THROTTLE_PREFIX = "ivr:admin:throttle:"
THROTTLE_WINDOW_SECONDS = 15 * 60
MAX_ATTEMPTS_PER_USER = 10  # failed sign-ins per user name per window
MAX_ATTEMPTS_PER_ADDRESS = 50  # per client address: an office may share one
NOT_SAVED = "Nothing was saved: please correct the fields marked below."
QUEUE_FIELDS = tuple(Queue.model_fields)  # the form's fields, in the model's order
FIELD_LABELS = {"sip_uri": "SIP URI", "fallback_sip_uris": "Fallback SIP URIs",
                "overflow": "Overflow queue", "message_to": "Messages to",
                "display_name": "Display name", "name": "Queue name"}
# The pages load nothing from elsewhere and run only our own script; forms post only back here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "script-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Endpoint = Callable[[Request], Awaitable[Response]]
SignedInEndpoint = Callable[[Request, AdminSession], Awaitable[Response]]


# --- rendering ----------------------------------------------------------------------------------

def _path_for(request: Request, route: str, query: dict[str, Any] | None = None, /,
              **params: Any) -> str:
    """A route's path (no scheme or host, so it stays right behind a TLS-terminating proxy)."""
    path = request.url_for(route, **params).path
    return f"{path}?{urlencode(query)}" if query else path


@jinja2.pass_context
def _path_for_template(context: Any, route: str, /, **params: Any) -> str:
    return _path_for(context["request"], route, **params)


def _when(value: str | None) -> Markup | str:
    """An ISO timestamp from the store as a <time> element whose text is the UTC time (right
    without JavaScript); static/local-time.js shows it in the browser's own time zone, with the
    UTC time as its title."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    machine = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    date, clock = f"{moment:%Y-%m-%d}", f"{moment:%H:%M:%S} UTC"
    # Date and time in spans of their own: on a phone the time wraps between them, not at a "-".
    return Markup('<time datetime="{}" title="{} {}"><span>{}</span> <span>{}</span></time>'
                  ).format(machine, date, clock, date, clock)


def _environment() -> jinja2.Environment:
    # Autoescape everything, whatever a template is called: no user text is ever markup.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals["path_for"] = _path_for_template
    env.globals["labels"] = FIELD_LABELS
    env.filters["when"] = _when
    env.filters["shown"] = shown
    env.filters["in_words"] = describe_answer
    return env


templates = Jinja2Templates(env=_environment())


def page(request: Request, template: str, session: AdminSession | None, status: int = 200,
         **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, template, {"session": session, **context}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def message_page(request: Request, session: AdminSession | None, status: int, title: str,
                 message: str) -> Response:
    return page(request, "message.html", session, status, title=title, message=message)


def redirect(request: Request, route: str, query: dict[str, Any] | None = None, /,
             **params: Any) -> Response:
    """303 after a POST, so reloading the page does not post again."""
    return RedirectResponse(_path_for(request, route, query, **params), status_code=303)


# --- who is signed in ---------------------------------------------------------------------------

def admin_enabled(request: Request) -> bool:
    """Whether the app has an admin who can sign in: a named user or the admin token."""
    return bool(request.app.state.settings.admin_users or request.app.state.admin_token)


def sessions(request: Request) -> SessionStore:
    settings = request.app.state.settings
    ttl = max(60, int(settings.admin_session_hours * 3600))
    return SessionStore(store_of(request).redis, ttl)


def set_cookie(request: Request, response: Response, key: str, value: str, path: str,
               max_age: int | None = None) -> None:
    settings = request.app.state.settings
    secure = bool(settings.public_url and settings.public_url.startswith("https:"))
    response.set_cookie(key, value, max_age=max_age, path=path, secure=secure, httponly=True,
                        samesite="strict")


def cookie_path(request: Request) -> str:
    return _path_for(request, "admin_index").rstrip("/") or "/"


async def read_form(request: Request) -> FormData | None:
    """The posted form, or None when it is larger than any of ours (or of unknown length)."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:
        return None
    return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)


def disabled_page(request: Request) -> Response:
    return page(request, "disabled.html", None, status=404)


def configured_credential(request: Request, session: AdminSession) -> str | None:
    """What the configuration holds now for the session's user (password hash) or token."""
    if session.via_token:
        token: str | None = request.app.state.admin_token
        return token
    encoded = request.app.state.settings.admin_users.get(session.user)
    return encoded.get_secret_value() if encoded is not None else None


async def current_session(request: Request) -> AdminSession | None:
    """The session of the request's cookie, if it exists and its credential is still configured;
    one whose user was removed, or whose password or token changed, is deleted here."""
    store = sessions(request)
    session = await store.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    if not session.credential_matches(configured_credential(request, session)):
        await store.delete(session.id)
        log.info("admin page: session of %s ended: its %s is no longer configured", session.user,
                 "admin token" if session.via_token else "user or password")
        return None
    return session


def signed_in(endpoint: SignedInEndpoint) -> Endpoint:
    """Run `endpoint` for a signed-in admin; others go to the sign-in page. A POST must carry
    the session's CSRF token (403 otherwise), so another site cannot post as the admin."""

    async def guarded(request: Request) -> Response:
        session = await current_session(request)
        if session is None:
            if SESSION_COOKIE not in request.cookies:
                return redirect(request, "admin_login")
            # A session that was there and is not any more: say why the admin is asked again.
            response = redirect(request, "admin_login", {"ended": 1})
            response.delete_cookie(SESSION_COOKIE, path=cookie_path(request))
            return response
        if request.method == "POST":
            form = await read_form(request)
            if form is None:
                return message_page(request, session, 413, "Form too large",
                                    "That form is larger than any this page sends.")
            if not tokens_match(form.get("csrf"), session.csrf_token):
                return message_page(request, session, 403, "Form refused",
                                    "This form's security token is missing or out of date. "
                                    "Go back, reload the page and try again.")
        try:
            return await endpoint(request, session)
        except Busy:
            return message_page(request, session, 503, "Too many changes at once",
                                "Other changes kept arriving while saving yours, so nothing "
                                "was saved. Go back and try again.")

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded


def store_unavailable_page(request: Request, exc: StoreUnavailable) -> Response:
    log.warning("admin page %s %s: %s", request.method, request.url.path, exc)
    return message_page(request, None, 503, "Redis is not answering", str(exc))


class SignedInAs(NamedTuple):
    user: str  # as the audit log records it
    credential: str  # the password hash or token the session is bound to
    via_token: bool


def password_checks(request: Request) -> asyncio.Semaphore:
    """This process's PBKDF2 slots (made on first use, in the app's event loop)."""
    state = request.app.state
    slots: asyncio.Semaphore | None = getattr(state, "admin_password_checks", None)
    if slots is None:
        slots = state.admin_password_checks = asyncio.Semaphore(PASSWORD_CHECKS_AT_ONCE)
    return slots


async def authenticate(request: Request, name: str, password: str) -> SignedInAs | None:
    """Who signed in, or None when the credentials are wrong."""
    if not name:
        token = request.app.state.admin_token
        if token and tokens_match(password, token):
            return SignedInAs(request.app.state.admin_token_name, token, via_token=True)
        return None
    users = request.app.state.settings.admin_users
    if not users:
        return None
    # An unknown name costs the same PBKDF2 as a known one: timing does not tell who exists.
    encoded = (users.get(name) or next(iter(users.values()))).get_secret_value()
    async with password_checks(request):  # a flood of sign-ins queues here, calls go on
        ok = await run_in_threadpool(verify_password, password, encoded)
    return SignedInAs(name, encoded, via_token=False) if ok and name in users else None


# --- sign-in throttle ---------------------------------------------------------------------------

# Count an attempt unless `limit` are already counted in the window: 0, or the seconds to wait.
_TAKE = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
if count > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1])
  return math.max(redis.call('TTL', KEYS[1]), 1)
end
return 0
"""
# Uncount an attempt that succeeded; never re-creates an expired key (it would not expire).
_GIVE_BACK = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class SignInThrottle:
    """Failed sign-ins counted in Redis (so across instances) per user name and per client
    address, in a fixed window from the first one. An attempt is counted before the password is
    checked (concurrent guesses cannot slip past the limit) and uncounted if it succeeds."""

    def __init__(self, request: Request, name: str) -> None:
        self.redis = store_of(request).redis
        host = request.client.host if request.client else "unknown"
        self.address_key = f"{THROTTLE_PREFIX}address:{host}"
        # Only a configured user's name is kept readable (an operator may DEL the key to unlock
        # it); any other name, of any length, becomes a short digest.
        users = request.app.state.settings.admin_users
        label = name if name in users else "?" + hashlib.sha256(name.encode()).hexdigest()[:32]
        self.user_key = f"{THROTTLE_PREFIX}user:{label}" if name else None

    async def take(self) -> int:
        """0 when the attempt may go on (now counted), else the seconds until it may."""
        take = self.redis.register_script(_TAKE)
        wait = int(await take(keys=[self.address_key],
                              args=[THROTTLE_WINDOW_SECONDS, MAX_ATTEMPTS_PER_ADDRESS]))
        if wait or self.user_key is None:
            return wait
        wait = int(await take(keys=[self.user_key],
                              args=[THROTTLE_WINDOW_SECONDS, MAX_ATTEMPTS_PER_USER]))
        if wait:
            await self.redis.register_script(_GIVE_BACK)(keys=[self.address_key])
        return wait

    async def succeeded(self) -> None:
        await self.redis.register_script(_GIVE_BACK)(keys=[self.address_key])
        if self.user_key is not None:
            await self.redis.delete(self.user_key)


def throttled_page(request: Request, name: str, wait: int) -> Response:
    minutes = max(1, -(-wait // 60))
    response = login_page(
        request, user=name, status=429,
        error=f"Too many failed sign-ins {'as this user' if name else 'with a token'} or from "
              f"your address. Nothing was checked: wait {minutes} minute"
              f"{'s' if minutes > 1 else ''} and try again.")
    response.headers["Retry-After"] = str(wait)
    return response


# --- sign in and out ----------------------------------------------------------------------------

async def login(request: Request) -> Response:
    if request.method == "GET":
        if await current_session(request) is not None:
            return redirect(request, "admin_index")
        notice = ("You are signed out." if "signed_out" in request.query_params
                  else SESSION_ENDED if "ended" in request.query_params else None)
        return login_page(request, notice=notice)
    form = await read_form(request)
    if form is None:
        return login_page(request, error="That form is too large.", status=413)
    # Double-submit: another site can post this form but can neither read nor send our cookie
    # (SameSite=Strict), so it cannot sign a victim in to the attacker's account.
    if not tokens_match(form.get("csrf"), request.cookies.get(LOGIN_COOKIE)):
        return login_page(request, error="The sign-in form had expired. Please try again.",
                          status=403)
    name = str(form.get("user", "")).strip()
    shown_name = repr(name[:MAX_ACTOR_LENGTH])  # for the log; the password never is
    throttle = SignInThrottle(request, name)
    wait = await throttle.take()
    if wait:
        log.warning("admin page: sign-in%s from %s refused: too many failures",
                    f" as {shown_name}" if name else " with a token",
                    request.client.host if request.client else "?")
        return throttled_page(request, name, wait)
    signed = await authenticate(request, name, str(form.get("password", "")))
    if signed is None:
        log.warning("admin page: failed sign-in%s",
                    f" as {shown_name}" if name else " with a token")
        return login_page(request, user=name, status=403,
                          error="Wrong user name or password." if name else "Wrong admin token.")
    await throttle.succeeded()
    store = sessions(request)
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:  # a fresh id at every sign-in: no fixation of an id set before it
        await store.delete(previous[:100])
    session = await store.create(signed.user, signed.credential, signed.via_token)
    log.info("admin page: %s signed in", signed.user)
    response = redirect(request, "admin_index")
    set_cookie(request, response, SESSION_COOKIE, session.id, cookie_path(request),
               max_age=store.ttl)
    response.delete_cookie(LOGIN_COOKIE, path=_path_for(request, "admin_login"))
    return response


def login_page(request: Request, user: str = "", error: str | None = None,
               notice: str | None = None, status: int = 200) -> Response:
    # Reuse the token of an open sign-in form, so two tabs do not invalidate each other.
    token = request.cookies.get(LOGIN_COOKIE, "")
    if not 20 <= len(token) <= 100:
        token = secrets.token_urlsafe(32)
    settings = request.app.state.settings
    response = page(request, "login.html", None, status, csrf=token, user=user, error=error,
                    notice=notice, users_enabled=bool(settings.admin_users),
                    token_enabled=bool(request.app.state.admin_token),
                    local_token=settings.local_admin_token_path if settings.is_local_trial
                    else None)
    set_cookie(request, response, LOGIN_COOKIE, token, _path_for(request, "admin_login"),
               max_age=3600)
    return response


@signed_in
async def logout(request: Request, session: AdminSession) -> Response:
    await sessions(request).delete(session.id)
    log.info("admin page: %s signed out", session.user)
    response = redirect(request, "admin_login", {"signed_out": 1})
    response.delete_cookie(SESSION_COOKIE, path=cookie_path(request))
    return response


# --- queues -------------------------------------------------------------------------------------

@signed_in
async def queue_list(request: Request, session: AdminSession) -> Response:
    """The queues by name, a page at a time, or those the search box finds."""
    search = request.query_params.get("q", "").strip()[:MAX_SEARCH_CHARS]
    # Any offset shows a page: not a number is the first page, past the end the last one.
    offset = number(request.query_params.get("offset")) or 0
    store = store_of(request)
    records, total = await store.records_page(search, offset, QUEUES_PAGE_SIZE)
    if offset and offset >= total:
        offset = max(0, (total - 1) // QUEUES_PAGE_SIZE * QUEUES_PAGE_SIZE)
        records, total = await store.records_page(search, offset, QUEUES_PAGE_SIZE)
    previous_page = (_queue_list_path(request, search, max(offset - QUEUES_PAGE_SIZE, 0))
                     if offset > 0 else None)
    next_page = (_queue_list_path(request, search, offset + QUEUES_PAGE_SIZE)
                 if offset + QUEUES_PAGE_SIZE < total else None)
    return page(request, "queues.html", session, records=records, total=total, offset=offset,
                search=search, previous_page=previous_page, next_page=next_page,
                used_by=await _queue_users(request), notice=_notice(request))


def _queue_list_path(request: Request, search: str, offset: int) -> str:
    query = {key: value for key, value in (("q", search), ("offset", offset)) if value}
    return _path_for(request, "admin_index", query or None)


async def _queue_users(request: Request) -> dict[str, str]:
    """Queue name -> the flows that route to it: the live version's, as Redis has it (this
    process may serve another for a moment); this process's flows if those cannot be known."""
    services = request.app.state.services
    routes: Mapping[str, Collection[str]]
    try:
        _, routes = await LiveRoutes(services.flow_store).routes()
    except RoutesUnknown:
        routes = queue_routes(services.flows)
    return {queue: flows_in_words(names) for queue, names in routes.items()}


def number(value: object) -> int | None:
    """A non-negative whole number typed in ASCII digits (not "²", not 10**30), or None."""
    if (isinstance(value, str) and value.isascii() and value.isdigit()
            and len(value) <= MAX_NUMBER_DIGITS):
        return int(value)
    return None


def _notice(request: Request) -> str | None:
    """The confirmation a redirect after a change asked for (numbers only: no text injected)."""
    query = request.query_params
    name = request.path_params.get("name", "")
    version = number(query.get("version"))
    if version is None:
        return None
    if "created" in query:
        return f"Created {name}: version {version}."
    if "saved" in query:
        return f"Saved {name}: version {version}."
    if "unchanged" in query:
        return f"Nothing to save: you changed no field. {name} is still version {version}."
    restored = number(query.get("rolled_back"))
    if restored is not None:
        return f"Rolled {name} back to version {restored}: it is now version {version}."
    same = number(query.get("same_as"))
    if same is not None:
        return (f"Nothing to restore: version {same} has the values {name} has now. {name} is "
                f"still version {version}.")
    return None


def form_values(queue: Queue | None) -> dict[str, str]:
    """A queue as the edit form shows it: one string per field."""
    if queue is None:
        return dict.fromkeys(QUEUE_FIELDS, "")
    return {
        "sip_uri": queue.sip_uri,
        "fallback_sip_uris": "\n".join(queue.fallback_sip_uris),
        "overflow": queue.overflow or "",
        "message_to": queue.message_to or "",
        "display_name": queue.display_name or "",
    }


def input_value(field: str, text: str) -> Any:
    """A form field's text as queue input: None when empty, a list of lines for the fallbacks."""
    if field == "fallback_sip_uris":
        return [line.strip() for line in text.splitlines() if line.strip()]
    return text.strip() or None


def queue_inputs(queue: Queue) -> dict[str, Any]:
    """A queue's fields as the form's input would give them, to compare with what was typed."""
    return {field: input_value(field, text) for field, text in form_values(queue).items()}


def posted_queue(form: FormData) -> tuple[dict[str, str], dict[str, Any]]:
    """The form as typed (to show again) and as queue input (empty fields left out)."""
    values = {field: str(form.get(field, "")) for field in QUEUE_FIELDS}
    data = {field: value for field, text in values.items()
            if (value := input_value(field, text))}
    return values, data


def errors_by_field(errors: list[dict[str, str]], data: dict[str, Any]) -> dict[str, list[str]]:
    """Validation messages keyed by the form field they belong next to ('' for the form)."""
    by_field: dict[str, list[str]] = {}
    for error in errors:
        field, _, index = error["field"].partition(".")
        message = error["message"]
        if field == "fallback_sip_uris" and index.isdigit():
            uris = data.get("fallback_sip_uris", [])
            uri = uris[int(index)] if int(index) < len(uris) else f"line {int(index) + 1}"
            message = f"{uri}: {message}"
        by_field.setdefault(field if field in FIELD_LABELS else "", []).append(message)
    return by_field


async def queue_page(request: Request, session: AdminSession, name: str, *,
                     record: QueueRecord | None = None, values: dict[str, str] | None = None,
                     errors: dict[str, list[str]] | None = None, version: int | None = None,
                     changed: dict[str, ChangedMeanwhile] | None = None,
                     notice: str | None = None, alert: str | None = None,
                     status: int = 200, before: int | None = None) -> Response:
    """The queue's page: where it sends calls (`record`, else read now), its edit form (the
    admin's input, if given, with the version it was read at, and the fields someone else
    changed meanwhile), and a page of its versions (below `before`, else the newest) with a
    link to restore each."""
    store = store_of(request)
    record = record or await store.record(name)
    if record is None:
        return message_page(request, session, 404, "No such queue",
                            f"There is no queue called {name!r}.")
    history = await store.history(name, HISTORY_PAGE_SIZE, before)
    return page(
        request, "queue.html", session, status,
        name=name, record=record, history=history.versions, before=before,
        older=history.next_before,
        values=values if values is not None else form_values(record.queue),
        errors=errors or {}, version=record.version if version is None else version,
        changed=changed or {}, overflow_choices=sorted(store.queue_names() - {name}),
        notice=notice, alert=alert, creating=False,
    )


@signed_in
async def show_queue(request: Request, session: AdminSession) -> Response:
    return await queue_page(request, session, request.path_params["name"],
                            notice=_notice(request),
                            before=number(request.query_params.get("before")))


@signed_in
async def save_queue(request: Request, session: AdminSession) -> Response:
    """Write the fields the admin changed in the form, and only those, on the version the form
    was opened at; if someone else changed the queue meanwhile, nothing is written and the form
    comes back with the current values and the admin's changes (see conflict_page)."""
    name = request.path_params["name"]
    form = await request.form()
    store = store_of(request)
    current = await store.record(name)
    if current is None:
        return await queue_page(request, session, name)
    # The version the form was opened at says what the admin started from: every version is
    # kept, so the form need not carry a copy of its values. Without one, the current values
    # stand in, and the save is refused as a conflict (the admin then sees what is current).
    read_at = number(form.get("version"))
    base = await store.version(name, read_at) if read_at is not None else None
    start = base or current
    typed = {field: str(form[field]) for field in QUEUE_FIELDS if field in form}
    mine = edits(start.queue, typed)
    if not mine:
        return redirect(request, "admin_queue", {"unchanged": 1, "version": current.version},
                        name=name)
    try:
        queue = patched_queue(name, start.queue, mine, store.queue_names())
        written = await store.put(
            name, queue, session.user,
            if_match=str(base.version) if base is not None else NEVER_MATCHES)
    except (InvalidInput, InvalidChange) as exc:
        errors = (errors_by_field(exc.errors, {**queue_inputs(start.queue), **mine})
                  if isinstance(exc, InvalidInput) else {"overflow": [str(exc)]})
        return await queue_page(request, session, name,
                                values={**form_values(start.queue), **typed}, errors=errors,
                                version=start.version, alert=NOT_SAVED, status=422)
    except StaleVersion:
        return await conflict_page(request, session, name, base, typed, mine)
    version = written.record.version
    if not written.changed:
        return redirect(request, "admin_queue", {"unchanged": 1, "version": version}, name=name)
    log.info("admin page: queue %s saved by %s: version %d (%s)", name, session.user, version,
             ", ".join(written.changed))
    return redirect(request, "admin_queue", {"saved": 1, "version": version}, name=name)


def edits(start: Queue, typed: dict[str, str]) -> dict[str, Any]:
    """The fields the admin changed from `start`, as queue input (a field not posted is not
    changed)."""
    before = queue_inputs(start)
    return {field: value for field, text in typed.items()
            if (value := input_value(field, text)) != before[field]}


class ChangedMeanwhile(NamedTuple):
    """A field someone else changed while the admin was editing, as the form marks it."""

    old: str
    new: str
    by: str  # who, in the order they changed it
    yours: str | None  # the admin's own, different value of the field, kept in the form


async def conflict_page(request: Request, session: AdminSession, name: str,
                        base: QueueRecord | None, typed: dict[str, str],
                        mine: dict[str, Any]) -> Response:
    """The form again after someone else's change won: the current values, each field they
    changed marked (old → new, and who), the admin's own changes kept only in the fields the
    admin changed, and the current version as the new starting point, so that saving again
    writes those fields on top of the other change, knowingly."""
    store = store_of(request)
    current = await store.record(name)
    if current is None:  # deleted meanwhile
        return await queue_page(request, session, name)
    now = queue_inputs(current.queue)
    changed: dict[str, ChangedMeanwhile] = {}
    if base is not None:
        before = queue_inputs(base.queue)
        authors = await changed_by(store, name, base, current)
        for field in QUEUE_FIELDS:
            if before[field] != now[field]:
                yours = mine.get(field, now[field])
                changed[field] = ChangedMeanwhile(
                    shown(before[field]), shown(now[field]),
                    ", ".join(authors.get(field, [current.updated_by])),
                    shown(yours) if yours != now[field] else None)
    values = {**form_values(current.queue), **{field: typed[field] for field in mine}}
    marked = (" The fields they changed are marked, with their old and new values."
              if changed else "")
    log.info("admin page: queue %s not saved by %s: changed meanwhile (now version %d)", name,
             session.user, current.version)
    return await queue_page(
        request, session, name, record=current, values=values, version=current.version,
        changed=changed, status=409,
        alert=f"Someone else changed this queue while you were editing it, so nothing was "
              f"saved. The form now shows its current values (version {current.version}), "
              f"with your own changes still in the fields you edited.{marked} Check them, "
              f"then Save again to apply your changes.")


async def changed_by(store: QueueStore, name: str, base: QueueRecord,
                     current: QueueRecord) -> dict[str, list[str]]:
    """Who changed each field after version `base`, up to `current`, in the order they did
    (the versions in between that are kept; at most a page's worth of the newest)."""
    between = min(current.version - base.version, MAX_VERSIONS_COMPARED)
    history = await store.history(name, between, before=current.version + 1)
    versions = sorted((record for record in history.versions if record.version > base.version),
                      key=lambda record: record.version)
    authors: dict[str, list[str]] = {}
    previous = queue_inputs(base.queue)
    for record in versions:
        fields = queue_inputs(record.queue)
        for field in QUEUE_FIELDS:
            who = authors.setdefault(field, [])
            if fields[field] != previous[field] and record.updated_by not in who:
                who.append(record.updated_by)
        previous = fields
    return {field: who for field, who in authors.items() if who}


@signed_in
async def confirm_rollback(request: Request, session: AdminSession) -> Response:
    """What restoring a version would change, with the button that does it: nothing is written
    until the admin has seen it."""
    name = request.path_params["name"]
    target = number(request.query_params.get("version"))
    if target is None:
        return await queue_page(request, session, name, status=422,
                                alert="That restore link is incomplete; use the links below.")
    return await restore_page(request, session, name, target)


async def restore_page(request: Request, session: AdminSession, name: str, target: int, *,
                       alert: str | None = None, status: int = 200) -> Response:
    """The confirmation of a restore: each field now and as version `target` has it."""
    store = store_of(request)
    current, old = await store.record(name), await store.version(name, target)
    if current is None or old is None:
        return await queue_page(request, session, name, record=current, status=404,
                                alert=not_kept(await store.version_missing(name, target)))
    rows = compare_queues(current.queue, old.queue)
    return page(request, "restore.html", session, status, name=name, record=current,
                target=old, rows=rows,
                changes=[FIELD_LABELS[row.field] for row in rows if row.differs], alert=alert)


@signed_in
async def rollback_queue(request: Request, session: AdminSession) -> Response:
    name = request.path_params["name"]
    form = await request.form()
    target, read_at = number(form.get("version")), number(form.get("current"))
    if target is None or read_at is None:
        return await queue_page(request, session, name, status=422,
                                alert="That rollback form is incomplete; use the links below.")
    if form.get("confirmed") != "1":  # a form from before restoring asked first
        return await restore_page(request, session, name, target)
    try:
        written = await store_of(request).rollback(name, target, session.user, str(read_at))
    except StaleVersion:
        return await restore_page(
            request, session, name, target, status=409,
            alert="Someone else changed this queue since this page was shown, so nothing was "
                  "restored. Below is what restoring would change now: confirm again, or "
                  "cancel.")
    except QueueNotFound as exc:
        return await queue_page(request, session, name, status=404, alert=not_kept(exc))
    except InvalidChange as exc:
        return await queue_page(request, session, name, status=422,
                                alert=f"Version {target} cannot be restored: {exc}")
    version = written.record.version
    if not written.changed:
        return redirect(request, "admin_queue", {"same_as": target, "version": version},
                        name=name)
    log.info("admin page: queue %s rolled back to version %s by %s: version %d (%s)", name,
             target, session.user, version, ", ".join(written.changed))
    return redirect(request, "admin_queue", {"rolled_back": target, "version": version},
                    name=name)


def not_kept(exc: QueueNotFound) -> str:
    """A version that cannot be restored, in the page's words."""
    return sentence(exc) if isinstance(exc, VersionNotKept) else "This queue has no such version."


def sentence(exc: Exception) -> str:
    """An error's words as a sentence of a page."""
    text = str(exc)
    return f"{text[:1].upper()}{text[1:]}."


@signed_in
async def new_queue(request: Request, session: AdminSession) -> Response:
    """A form to add a queue (GET), and adding it (POST)."""
    store = store_of(request)
    if request.method == "GET":
        return new_queue_page(request, session, store, "", form_values(None), {})
    form = await request.form()
    name = str(form.get("name", "")).strip()
    values, data = posted_queue(form)
    try:
        queue = queue_from_input(name, data, store.queue_names())
        # The queue must not exist yet, so this never replaces a queue silently.
        record = (await store.put(name, queue, session.user, if_match=MUST_NOT_EXIST)).record
    except InvalidInput as exc:
        errors = errors_by_field(exc.errors, data)
    except InvalidChange as exc:
        errors = {"overflow": [str(exc)]}
    except StaleVersion:
        errors = {"name": ["a queue with this name already exists"]}
    else:
        log.info("admin page: queue %s created by %s", name, session.user)
        return redirect(request, "admin_queue", {"created": 1, "version": record.version},
                        name=name)
    return new_queue_page(request, session, store, name, values, errors, alert=NOT_SAVED,
                          status=422)


def new_queue_page(request: Request, session: AdminSession, store: QueueStore, name: str,
                   values: dict[str, str], errors: dict[str, list[str]],
                   alert: str | None = None, status: int = 200) -> Response:
    return page(request, "queue.html", session, status, name=name, record=None, history=[],
                before=None, older=None,
                values=values, errors=errors, changed={}, version=0, creating=True,
                overflow_choices=sorted(store.queue_names()), notice=None, alert=alert)


# --- audit log ----------------------------------------------------------------------------------

def audit_changes(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, old, new) for each field the change touched."""
    old, new = entry.get("old") or {}, entry.get("new") or {}
    fields = [*QUEUE_FIELDS, *sorted((set(old) | set(new)) - {*QUEUE_FIELDS, *RECORD_META})]
    changes = []
    for field in fields:
        before, after = old.get(field), new.get(field)
        if before != after and (before or after):
            changes.append((FIELD_LABELS.get(field, field), shown(before), shown(after)))
    return changes


@signed_in
async def audit_log(request: Request, session: AdminSession) -> Response:
    # Any offset shows a page: not a number is the first page, past the end the last one.
    offset = number(request.query_params.get("offset")) or 0
    entries, total = await store_of(request).audit(offset, AUDIT_PAGE_SIZE)
    if offset and offset >= total:
        offset = max(0, (total - 1) // AUDIT_PAGE_SIZE * AUDIT_PAGE_SIZE)
        entries, total = await store_of(request).audit(offset, AUDIT_PAGE_SIZE)
    rows = [{**entry, "changes": audit_changes(entry)} for entry in entries]
    return page(request, "audit.html", session, rows=rows, total=total, offset=offset,
                page_size=AUDIT_PAGE_SIZE)


# --- recent calls -------------------------------------------------------------------------------

@signed_in
async def recent_calls(request: Request, session: AdminSession) -> Response:
    """The newest call traces, or one call's (a CallSid or MessageSid typed in the filter)."""
    sid = request.query_params.get("sid", "").strip()
    if not is_sid(sid):
        sid = ""
    traces = request.app.state.services.traces
    calls = await traces.recent(CALLS_PAGE_SIZE, sid=sid or None)
    return page(request, "calls.html", session, calls=calls, sid=sid, page_size=CALLS_PAGE_SIZE,
                hours=request.app.state.settings.trace_hours)


routes = [
    Route("/", queue_list, methods=["GET"], name="admin_index"),
    Route("/login", login, methods=["GET", "POST"], name="admin_login"),
    Route("/logout", logout, methods=["POST"], name="admin_logout"),
    Route("/new", new_queue, methods=["GET", "POST"], name="admin_new_queue"),
    Route("/queues/{name}", show_queue, methods=["GET"], name="admin_queue"),
    Route("/queues/{name}", save_queue, methods=["POST"], name="admin_save_queue"),
    Route("/queues/{name}/rollback", confirm_rollback, methods=["GET"],
          name="admin_confirm_rollback"),
    Route("/queues/{name}/rollback", rollback_queue, methods=["POST"], name="admin_rollback"),
    Route("/audit", audit_log, methods=["GET"], name="admin_audit"),
    Route("/calls", recent_calls, methods=["GET"], name="admin_calls"),
]
# Outside the guard: the disabled and the outage pages are styled from here.
static_files = StaticFiles(directory=HERE / "static")
