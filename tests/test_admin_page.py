"""The admin page at /admin, driven in a real headless Chromium (Debian's, through Playwright)
against the real app under uvicorn and a real Redis; the security checks use plain HTTP."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

import ivr.admin.pages
from ivr.passwords import hash_password, verify_password
from ivr.redis.queue_store import QUEUES_KEY
from ivr.settings import Settings
from tests.loyalty_api import GOLD
from tests.servers import ServerThread
from tests.twilio_client import FakeTwilio, call_params, message_params

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ADMIN_TOKEN = "page-admin-token-0123456789abcdef"
OLD_GOLD = "sip:gold@queues.example.com"
NEW_GOLD = "sip:gold@new-pbx.example.com"
ROUTING_DELAY = 2.0  # other instances learn of a change by pub/sub
# Few PBKDF2 iterations: the page verifies the same way, only faster.
ALICE = hash_password("pw", iterations=1000)
BOB = hash_password("bob's pw", iterations=1000)
USERS = {"alice": ALICE, "bob": BOB}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("IVR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and IVR_REQUIRE_BROWSER=1 requires the browser tests")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(make_settings: Callable[..., Settings],
           start_server: Callable[[Settings], ServerThread]) -> ServerThread:
    return start_server(make_settings(admin_token=ADMIN_TOKEN, admin_users=USERS))


@pytest.fixture
def new_page(browser: Browser, server: ServerThread) -> Iterator[Callable[..., Page]]:
    """Each call opens a page in a browser context of its own (its own cookies: another admin),
    with the context options given (java_script_enabled=False, say)."""
    contexts = []

    def open_page(**options: Any) -> Page:
        context = browser.new_context(base_url=server.url, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


def sign_in(page: Page, user: str = "alice", password: str = "pw") -> None:
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login$"))
    page.get_by_label("User name").fill(user)
    page.locator("#password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def open_queue(page: Page, name: str) -> None:
    page.goto("/admin/")
    page.locator(f"#queue-{name}").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Queue {name}")


def save_sip_uri(page: Page, uri: str) -> int:
    """Type `uri` into the open queue's form, save, and return the HTTP status of the POST."""
    page.get_by_label("SIP URI", exact=True).fill(uri)
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    return posted.value.status


def stored(redis_url: str, name: str) -> dict[str, object]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        return json.loads(client.hget(QUEUES_KEY, name))


def routed_sip_uri(server: ServerThread, expected: str) -> str:
    """The <Sip> URI a gold caller is dialled to, once it is `expected` or the delay is over."""
    deadline = time.monotonic() + ROUTING_DELAY
    while True:
        twiml = FakeTwilio(server.url).call(GOLD).text
        uri = re.search(r"<Sip>([^<]*)</Sip>", twiml)
        if (uri and uri.group(1) == expected) or time.monotonic() > deadline:
            return uri.group(1) if uri else twiml
        time.sleep(0.05)


# --- in the browser -------------------------------------------------------------------------------

def test_a_signed_in_admin_sees_every_queue_and_where_it_sends_calls(page: Page) -> None:
    sign_in(page)
    expect(page.get_by_role("heading", name="Queues")).to_be_visible()
    expect(page.locator("header")).to_contain_text("Signed in as alice")
    for name in ("gold", "platinum", "standard"):
        expect(page.locator(f"#queue-{name} .sip-uri")).to_have_text(
            f"sip:{name}@queues.example.com")
    expect(page.locator("#queue-platinum")).to_contain_text("+15550100102")
    expect(page.locator("#queue-gold")).to_contain_text("used by flow loyalty_routing")
    expect(page.locator("#queue-vip")).to_contain_text(
        "used by flows new_vs_returning, vip_by_email")


def test_a_bad_sip_uri_is_explained_next_to_the_field_and_nothing_is_stored(
        page: Page, redis_url: str) -> None:
    sign_in(page)
    open_queue(page, "gold")
    assert save_sip_uri(page, "http://gold.example.com") == 422
    field = page.locator(".field", has=page.locator("#sip_uri"))
    expect(field.locator(".field-error")).to_have_text("must start with sip: or sips:")
    expect(page.locator("#sip_uri")).to_have_value("http://gold.example.com")
    expect(page.locator("#current .sip-uri")).to_have_text(OLD_GOLD)
    record = stored(redis_url, "gold")
    assert (record["sip_uri"], record["version"]) == (OLD_GOLD, 1)


def test_a_saved_sip_uri_is_confirmed_and_routes_the_next_call(
        page: Page, server: ServerThread) -> None:
    sign_in(page)
    open_queue(page, "gold")
    assert save_sip_uri(page, NEW_GOLD) == 303
    expect(page.get_by_role("status")).to_have_text("Saved gold: version 2.")
    expect(page.locator("#current .sip-uri")).to_have_text(NEW_GOLD)
    assert routed_sip_uri(server, NEW_GOLD) == NEW_GOLD


def restore_version(page: Page, version: int) -> None:
    """Restore `version` from the open queue's history, confirming what it changes."""
    page.locator(f"#version-{version}").get_by_role(
        "link", name=f"Restore version {version}").click()
    page.get_by_role("button", name=f"Restore version {version}").click()


def test_restoring_a_version_first_shows_what_it_changes_and_writes_nothing_until_confirmed(
        page: Page, server: ServerThread, redis_url: str) -> None:
    """Restore version N acted in one click, with no confirmation."""
    sign_in(page)
    open_queue(page, "gold")
    save_sip_uri(page, NEW_GOLD)
    page.locator("#version-1").get_by_role("link", name="Restore version 1").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Restore version 1 of gold?")
    expect(page.locator("#restore-summary")).to_contain_text("Restoring it changes SIP URI;")
    expect(page.locator("#restore-sip_uri")).to_contain_text(f"{NEW_GOLD} changes to {OLD_GOLD}")
    expect(page.locator("#restore-message_to")).to_contain_text("+15550100101 unchanged")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-page-restore.png"), full_page=True)
    assert stored(redis_url, "gold")["version"] == 2  # nothing written by showing it
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("#current .sip-uri")).to_have_text(NEW_GOLD)
    assert stored(redis_url, "gold")["version"] == 2
    restore_version(page, 1)
    expect(page.get_by_role("status")).to_have_text(
        "Rolled gold back to version 1: it is now version 3.")
    expect(page.locator("#current .sip-uri")).to_have_text(OLD_GOLD)
    expect(page.locator("#version-3")).to_contain_text("current")
    assert routed_sip_uri(server, OLD_GOLD) == OLD_GOLD
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-page.png"), full_page=True)


def test_the_audit_log_shows_who_changed_what_newest_first(page: Page) -> None:
    sign_in(page)
    open_queue(page, "gold")
    save_sip_uri(page, NEW_GOLD)
    restore_version(page, 1)
    page.get_by_role("link", name="Audit log").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("alice")
    expect(rows.nth(0)).to_contain_text("rollback to version 1")
    expect(rows.nth(0).locator("code.old")).to_have_text(NEW_GOLD)
    expect(rows.nth(0).locator("code.new")).to_have_text(OLD_GOLD)
    expect(rows.nth(1)).to_contain_text("update")
    expect(rows.nth(1).locator(".change")).to_have_text(f"SIP URI: {OLD_GOLD} → {NEW_GOLD}")


def test_the_audit_log_shows_purges_of_cached_lookups(page: Page, server: ServerThread) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-IVR-Actor": "bob"}
    purge = {"flow": "loyalty_routing", "step": "lookup"}
    for body in ({**purge, "caller": GOLD}, purge):
        response = httpx.post(server.url + "/admin/api/cache/purge", headers=headers, json=body)
        assert response.status_code == 200, response.text
    sign_in(page)
    page.get_by_role("link", name="Audit log").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("bob (admin token)")
    expect(rows.nth(0)).to_contain_text("purge")
    expect(rows.nth(0)).to_contain_text("flow loyalty_routing, step lookup")
    expect(rows.nth(0).locator("td.purged")).to_have_text("every caller (now generation 1)")
    expect(rows.nth(1).locator("td.purged")).to_have_text("caller +1*******001: 0 answers removed")


def test_two_admins_saving_at_once_do_not_silently_overwrite_each_other(
        new_page: Callable[..., Page], redis_url: str) -> None:
    alice, token_admin = new_page(), new_page()
    sign_in(alice)
    sign_in(token_admin, user="", password=ADMIN_TOKEN)
    open_queue(alice, "gold")
    open_queue(token_admin, "gold")
    assert save_sip_uri(alice, NEW_GOLD) == 303
    assert save_sip_uri(token_admin, "sip:gold@other-pbx.example.com") == 409
    expect(token_admin.get_by_role("alert")).to_contain_text("Someone else changed this queue")
    expect(token_admin.locator("#current .sip-uri")).to_have_text(NEW_GOLD)
    # Both changed the SIP URI: the field says so, with both values; the admin's is in the input.
    expect(token_admin.locator("#sip_uri-changed")).to_contain_text(
        f"Changed meanwhile by alice: was {OLD_GOLD}, now {NEW_GOLD}.")
    expect(token_admin.locator("#sip_uri-changed")).to_contain_text(
        "You changed it too: your value, sip:gold@other-pbx.example.com, is kept in the field")
    expect(token_admin.locator("#sip_uri")).to_have_value("sip:gold@other-pbx.example.com")
    assert stored(redis_url, "gold")["sip_uri"] == NEW_GOLD
    # Seen the other change, saving again is a deliberate overwrite.
    token_admin.get_by_role("button", name="Save").click()
    expect(token_admin.get_by_role("status")).to_have_text("Saved gold: version 3.")
    record = stored(redis_url, "gold")
    assert (record["sip_uri"], record["updated_by"]) == (
        "sip:gold@other-pbx.example.com", "admin token")


def test_after_a_conflict_saving_again_keeps_the_other_admins_change(
        new_page: Callable[..., Page], redis_url: str) -> None:
    """Issue 15: A saves a new SIP URI; B, whose form was opened before and who only edited
    "Messages to", was refused, but B's form still held the old SIP URI, unmarked, and saving
    again put it back. B's browser runs no script: the page works without one."""
    alice, bob = new_page(), new_page(java_script_enabled=False)
    sign_in(alice)
    sign_in(bob, user="bob", password="bob's pw")
    open_queue(alice, "platinum")
    open_queue(bob, "platinum")
    new_platinum = "sip:platinum@new-pbx.example.com"
    assert save_sip_uri(alice, new_platinum) == 303

    bob.get_by_label("Messages to").fill("+15550100199")
    with bob.expect_response(lambda response: response.request.method == "POST") as posted:
        bob.get_by_role("button", name="Save").click()
    assert posted.value.status == 409
    expect(bob.get_by_role("alert")).to_contain_text("Someone else changed this queue")
    # The form shows the current SIP URI, marked in words (old → new, who), tied to the input.
    expect(bob.locator("#sip_uri")).to_have_value(new_platinum)
    sip_uri_field = bob.locator(".field", has=bob.locator("#sip_uri"))
    expect(sip_uri_field).to_have_class(re.compile(r"\bchanged\b"))
    expect(sip_uri_field.locator(".changed-meanwhile")).to_contain_text(
        f"Changed meanwhile by alice: was sip:platinum@queues.example.com, now {new_platinum}.")
    expect(bob.locator("#sip_uri")).to_have_attribute("aria-describedby", "sip_uri-changed")
    # Bob's own edit is kept, and only there; fields no one changed carry no mark.
    expect(bob.locator("#message_to")).to_have_value("+15550100199")
    expect(bob.locator(".changed-meanwhile")).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    bob.screenshot(path=str(ARTIFACTS / "admin-page-conflict.png"), full_page=True)
    record = stored(redis_url, "platinum")
    assert (record["sip_uri"], record["message_to"], record["version"]) == (
        new_platinum, "+15550100102", 2)

    bob.get_by_role("button", name="Save").click()
    expect(bob.get_by_role("status")).to_have_text("Saved platinum: version 3.")
    record = stored(redis_url, "platinum")
    assert (record["sip_uri"], record["message_to"], record["updated_by"]) == (
        new_platinum, "+15550100199", "bob")


def test_an_admin_adds_a_queue(page: Page, redis_url: str) -> None:
    sign_in(page)
    page.get_by_role("link", name="Add a queue").click()
    page.get_by_label("Queue name").fill("night")
    page.get_by_label("SIP URI", exact=True).fill("sip:night@pbx.example.com")
    page.get_by_label("Overflow queue").select_option("standard")
    page.get_by_role("button", name="Add queue").click()
    expect(page.get_by_role("status")).to_have_text("Created night: version 1.")
    assert stored(redis_url, "night")["overflow"] == "standard"


def test_a_wrong_password_does_not_sign_in(page: Page) -> None:
    sign_in(page, password="not alice's password")
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    expect(page.get_by_label("User name")).to_have_value("alice")
    page.goto("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login$"))


def test_signing_out_ends_the_session(page: Page) -> None:
    sign_in(page)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto("/admin/audit")
    expect(page).to_have_url(re.compile(r"/admin/login$"))


# --- times, phones and the Calls page, in the browser ---------------------------------------------

PHONE = {"width": 375, "height": 740}
# Under Twilio's 255 characters, with no place to break but the `@` and the dots.
LONG_URI = "sip:" + "x" * (250 - len("sip:@pbx.example.com")) + "@pbx.example.com"
TEAM_CHOICE = "+15005550102"  # flows/team_choice.yaml: "sales or support?", then a route
CUSTOMER = "+15550000077"
# Chromium's name (locale en-US) of a zone that has no abbreviation there; others are Python's.
CHROMIUM_ZONE_NAMES = {"IST": "GMT+5:30"}


def admin_api(server: ServerThread) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=10,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def stored_traces(server: ServerThread, count: int, **params: str) -> list[dict[str, Any]]:
    """The call traces (newest first), once `count` are stored (they are written in batches)."""
    deadline = time.monotonic() + 15
    with admin_api(server) as client:
        while True:
            calls = client.get("/admin/api/calls", params=params).json()["calls"]
            if len(calls) >= count or time.monotonic() > deadline:
                return calls
            time.sleep(0.05)


def utc_text(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_every_time_shows_in_the_browsers_zone_named_with_utc_on_hover(
        zone: str, browser: Browser, server: ServerThread) -> None:
    with admin_api(server) as client:
        assert client.patch("/admin/api/queues/gold", json={"sip_uri": NEW_GOLD}).is_success
    FakeTwilio(server.url).call(GOLD)
    stored_traces(server, 1)
    context = browser.new_context(base_url=server.url, timezone_id=zone, locale="en-US")
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        sign_in(page)
        for path in ("/admin/", "/admin/queues/gold", "/admin/audit", "/admin/calls"):
            page.goto(path)
            times = page.locator("main time")
            assert times.count() >= 1, path
            for element in times.all():
                moment = datetime.fromisoformat(element.get_attribute("datetime") or "")
                local = moment.astimezone(ZoneInfo(zone))
                name = CHROMIUM_ZONE_NAMES.get(local.tzname() or "", local.tzname())
                expect(element).to_have_text(f"{local:%Y-%m-%d %H:%M:%S} {name}")
                expect(element).to_have_attribute("title", utc_text(moment))
    finally:
        context.close()


def test_without_javascript_every_time_reads_in_utc(browser: Browser, server: ServerThread
                                                     ) -> None:
    context = browser.new_context(base_url=server.url, timezone_id="Asia/Kolkata",
                                  java_script_enabled=False)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        sign_in(page)
        page.goto("/admin/queues/gold")
        element = page.locator("#current time")
        moment = datetime.fromisoformat(element.get_attribute("datetime") or "")
        assert moment.utcoffset() is not None
        expect(element).to_have_text(utc_text(moment))
    finally:
        context.close()


def lies_inside(inner: Locator, outer: Locator) -> bool:
    box, frame = inner.bounding_box(), outer.bounding_box()
    assert box is not None and frame is not None
    return (box["x"] >= frame["x"] - 0.5 and box["y"] >= frame["y"] - 0.5
            and box["x"] + box["width"] <= frame["x"] + frame["width"] + 0.5
            and box["y"] + box["height"] <= frame["y"] + frame["height"] + 0.5)


def test_on_a_phone_no_page_scrolls_sideways_and_a_long_sip_uri_stays_in_its_card(
        browser: Browser, server: ServerThread) -> None:
    with admin_api(server) as client:
        changed = client.patch("/admin/api/queues/gold", json={
            "sip_uri": LONG_URI, "fallback_sip_uris": [LONG_URI.replace("x", "y")],
            "display_name": "Gold members of the loyalty programme, all regions"})
        assert changed.is_success, changed.text
    assert len(LONG_URI) == 250
    FakeTwilio(server.url).call(GOLD)
    stored_traces(server, 1)
    context = browser.new_context(base_url=server.url, viewport=PHONE)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto("/admin/login")
        widths = {"/admin/login": page.evaluate("document.documentElement.scrollWidth")}
        sign_in(page)
        for path in ("/admin/", "/admin/queues/gold", "/admin/audit", "/admin/calls",
                     "/admin/new", "/admin/queues/gold/rollback?version=1"):
            page.goto(path)
            widths[path] = page.evaluate("document.documentElement.scrollWidth")
        assert widths == dict.fromkeys(widths, PHONE["width"])

        page.goto("/admin/queues/gold")
        expect(page.locator("#current .sip-uri")).to_have_text(LONG_URI)
        assert lies_inside(page.locator("#current .sip-uri"), page.locator("#current"))
        uri_cell = page.locator("#version-2 td", has=page.locator("code")).first
        assert lies_inside(uri_cell.locator("code"), uri_cell)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "admin-page-phone.png"), full_page=True)
        page.goto("/admin/")
        uri_cell = page.locator("#queue-gold td", has=page.locator(".sip-uri"))
        assert lies_inside(uri_cell.locator(".sip-uri"), uri_cell)
        page.goto("/admin/audit")
        change = page.locator("table.audit .change").first
        assert lies_inside(change.locator("code.new"), change)

        # Restoring compares both values of each field side by side, inside the card.
        page.goto("/admin/queues/gold/rollback?version=1")
        page.screenshot(path=str(ARTIFACTS / "admin-page-phone-restore.png"), full_page=True)
        assert lies_inside(page.locator("table.restore"), page.locator("#restore"))
        for cell in page.locator("table.restore td", has=page.locator("code")).all():
            assert lies_inside(cell.locator("code"), cell)

        # The queue's page after a conflict, each field someone else changed marked.
        page.goto("/admin/queues/gold")
        with admin_api(server) as client:
            assert client.patch("/admin/api/queues/gold", json={
                "sip_uri": LONG_URI.replace("@pbx.", "@pbx2."),
                "message_to": "+15550100199"}).is_success
        page.get_by_label("Display name").fill("Gold")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#sip_uri-changed")).to_contain_text("Changed meanwhile")
        page.screenshot(path=str(ARTIFACTS / "admin-page-phone-conflict.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") == PHONE["width"]
        assert lies_inside(page.locator("#sip_uri-changed"),
                           page.locator(".field.changed", has=page.locator("#sip_uri")))
    finally:
        context.close()


def test_the_calls_page_shows_the_question_waiting_the_answer_and_a_sticky_hand_off(
        page: Page, server: ServerThread) -> None:
    twilio = FakeTwilio(server.url)
    call = call_params(CUSTOMER, To=TEAM_CHOICE)
    assert "<Gather" in twilio.post("/twilio/voice", call).text
    assert "sip:support@" in twilio.post("/twilio/voice?turn=1", {**call, "Digits": "2"}).text
    for body in ("Hello", "sales please"):
        twilio.post("/twilio/messaging", message_params(CUSTOMER, body, To=TEAM_CHOICE))
    later = message_params(CUSTOMER, "and one more thing", To=TEAM_CHOICE)
    twilio.post("/twilio/messaging", later)
    stored_traces(server, 5)

    sign_in(page)
    page.goto(f"/admin/calls?sid={call['CallSid']}")
    answered, asked = page.locator("table.calls tbody tr").all()
    expect(asked.locator("td.outcome")).to_have_text("waits at menu")
    expect(answered).to_contain_text('answer at menu: "2" (support)')
    expect(answered.locator("td.outcome")).to_have_text("support")
    page.goto(f"/admin/calls?sid={later['MessageSid']}")
    forwarded = page.locator("table.calls tbody tr")
    expect(forwarded).to_have_count(1)
    expect(forwarded).to_contain_text(
        "forwarded to queue sales (conversation already handed off)")
    expect(forwarded.locator("td.outcome")).to_have_text("sales")


# --- over plain HTTP ------------------------------------------------------------------------------

def csrf_in(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def post_sign_in(client: httpx.Client, user: str, password: str) -> httpx.Response:
    """Open the sign-in form (for its cookie and token) and post it."""
    login_form = client.get("/admin/login")
    return client.post("/admin/login", data={
        "csrf": csrf_in(login_form.text), "user": user, "password": password})


@pytest.fixture
def http_client(server: ServerThread) -> Iterator[Callable[..., httpx.Client]]:
    """Each call gives an HTTP client of its own (its own cookies: another admin), signed in as
    `user` (with the admin token when user is ""), or not signed in when user is None."""
    clients: list[httpx.Client] = []

    def make(user: str | None = None, password: str = "pw") -> httpx.Client:
        client = httpx.Client(base_url=server.url, timeout=10)
        clients.append(client)
        if user is not None:
            signed_in = post_sign_in(client, user, password)
            assert signed_in.status_code == 303, signed_in.text
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def alice_http(http_client: Callable[..., httpx.Client]) -> tuple[httpx.Client, str]:
    """An HTTP client signed in as alice, and the session's CSRF token."""
    client = http_client("alice")
    return client, csrf_in(client.get("/admin/").text)


def test_an_unauthenticated_get_redirects_to_the_sign_in_page(server: ServerThread) -> None:
    for path in ("/admin/", "/admin/queues/gold", "/admin/audit", "/admin/new"):
        response = httpx.get(server.url + path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/admin/login"


def test_a_post_without_the_csrf_token_is_refused(
        alice_http: tuple[httpx.Client, str], redis_url: str) -> None:
    client, csrf = alice_http
    change = {"sip_uri": NEW_GOLD, "version": "1"}
    assert client.post("/admin/queues/gold", data=change).status_code == 403
    assert client.post("/admin/queues/gold", data={**change, "csrf": "x" * 43}).status_code == 403
    assert client.post("/admin/queues/gold/rollback",
                       data={"version": "1", "current": "1"}).status_code == 403
    assert client.post("/admin/logout").status_code == 403
    assert stored(redis_url, "gold")["version"] == 1
    assert client.post("/admin/queues/gold", data={**change, "csrf": csrf}).status_code == 303


def test_a_sign_in_posted_from_elsewhere_is_refused(server: ServerThread) -> None:
    # Another site can send the form fields but not our sign-in form's cookie.
    response = httpx.post(server.url + "/admin/login",
                          data={"csrf": "a" * 43, "user": "alice", "password": "pw"})
    assert response.status_code == 403
    assert "ivr_admin_session" not in response.headers.get("set-cookie", "")


def test_the_session_cookie_is_http_only_same_site_strict_and_scoped_to_admin(
        make_settings: Callable[..., Settings],
        start_server: Callable[[Settings], ServerThread]) -> None:
    server = start_server(make_settings(admin_token=ADMIN_TOKEN,
                                        public_url="https://ivr.example.com"))
    with httpx.Client(base_url=server.url) as client:
        login_form = client.get("/admin/login")
        token = csrf_in(login_form.text)
        response = client.post(
            "/admin/login", data={"csrf": token, "user": "", "password": ADMIN_TOKEN},
            headers={"cookie": f"ivr_admin_login={token}"})
    assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie")
                  if c.startswith("ivr_admin_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/admin", "secure"} <= attributes


def test_queue_text_is_shown_as_text_never_as_markup(
        alice_http: tuple[httpx.Client, str]) -> None:
    client, csrf = alice_http
    markup = '<img src=x onerror="alert(1)">'
    saved = client.post("/admin/queues/gold", data={
        "csrf": csrf, "version": "1", "sip_uri": OLD_GOLD, "display_name": markup})
    assert saved.status_code == 303
    for path in ("/admin/", "/admin/queues/gold", "/admin/audit"):
        html = client.get(path).text
        assert markup not in html
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html


def test_the_page_says_how_to_enable_it_when_no_admin_is_configured(
        make_settings: Callable[..., Settings],
        start_server: Callable[[Settings], ServerThread]) -> None:
    server = start_server(make_settings())
    for path in ("/admin/", "/admin/login"):
        response = httpx.get(server.url + path)
        assert response.status_code == 404
        assert "Admin access is disabled" in response.text
        assert "IVR_ADMIN_USERS" in response.text and "IVR_ADMIN_TOKEN" in response.text


def test_a_sign_in_lasts_ivr_admin_session_hours(
        make_settings: Callable[..., Settings],
        start_server: Callable[[Settings], ServerThread], redis_url: str) -> None:
    server = start_server(make_settings(admin_users=USERS, admin_session_hours=0.5))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        signed_in = post_sign_in(client, "alice", "pw")
    assert signed_in.status_code == 303
    cookie = next(c for c in signed_in.headers.get_list("set-cookie")
                  if c.startswith("ivr_admin_session="))
    assert "max-age=1800" in cookie.lower()
    with redis.Redis.from_url(redis_url) as store:
        [session] = store.keys("{ivr}:admin:session:*")
        assert 1790 <= store.ttl(session) <= 1800


# --- sessions end when their credential does ----------------------------------------------------

def session_keys(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return len(client.keys("{ivr}:admin:session:*"))


def is_signed_in(client: httpx.Client, url: str) -> bool:
    response = client.get(url + "/admin/audit")
    assert response.status_code in (200, 303), response.text
    return response.status_code == 200


@pytest.mark.parametrize("change", ["alice removed", "alice's password changed"])
def test_a_session_ends_when_its_user_is_removed_or_their_password_changes(
        change: str, server: ServerThread, http_client: Callable[..., httpx.Client],
        make_settings: Callable[..., Settings],
        start_server: Callable[[Settings], ServerThread], redis_url: str) -> None:
    alice, bob = http_client("alice"), http_client("bob", "bob's pw")
    assert is_signed_in(alice, server.url) and is_signed_in(bob, server.url)
    # The operator changes IVR_ADMIN_USERS and restarts: a server sharing the same Redis.
    users = ({"bob": BOB} if change == "alice removed"
             else {"alice": hash_password("new pw", iterations=1000), "bob": BOB})
    restarted = start_server(make_settings(admin_token=ADMIN_TOKEN, admin_users=users))
    response = alice.get(restarted.url + "/admin/audit")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?ended=1"
    assert 'ivr_admin_session=""' in response.headers["set-cookie"]
    # The sign-in page says why she is asked again.
    assert "Your session has ended" in alice.get(restarted.url + "/admin/login?ended=1").text
    # Deleted, not merely refused: the old server's configuration cannot revive it either.
    assert session_keys(redis_url) == 1
    assert not is_signed_in(alice, server.url)
    assert is_signed_in(bob, restarted.url)  # bob's user and password did not change


def test_a_session_signed_in_with_the_admin_token_ends_when_the_token_is_rotated(
        server: ServerThread, http_client: Callable[..., httpx.Client],
        make_settings: Callable[..., Settings],
        start_server: Callable[[Settings], ServerThread]) -> None:
    token_admin, alice = http_client("", ADMIN_TOKEN), http_client("alice")
    rotated = start_server(make_settings(admin_token="rotated-admin-token-0123456789abcdef",
                                         admin_users=USERS))
    # Followed as a browser would: the sign-in page, saying why (it said nothing before).
    ended = token_admin.get(rotated.url + "/admin/", follow_redirects=True)
    assert ended.url.path == "/admin/login"
    assert "Your session has ended" in ended.text
    assert not is_signed_in(token_admin, rotated.url)
    assert not is_signed_in(token_admin, server.url)
    assert is_signed_in(alice, rotated.url)


# --- sign-in throttle --------------------------------------------------------------------------

@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passwords the page hashed (the servers run in this process)."""
    checked: list[str] = []

    def counting(password: str, encoded: str) -> bool:
        checked.append(password)
        return verify_password(password, encoded)

    monkeypatch.setattr(ivr.admin.pages, "verify_password", counting)
    return checked


def test_after_10_failed_sign_ins_a_user_name_is_refused_without_checking_the_password(
        http_client: Callable[..., httpx.Client], password_checks: list[str],
        redis_url: str) -> None:
    client = http_client()
    for attempt in range(10):
        assert post_sign_in(client, "alice", f"guess {attempt}").status_code == 403
    assert len(password_checks) == 10
    refused = post_sign_in(client, "alice", "guess 10")
    assert len(password_checks) == 10  # refused without hashing the password
    assert refused.status_code == 429
    assert "Too many failed sign-ins as this user" in refused.text
    assert "wait 15 minutes" in refused.text
    assert 890 <= int(refused.headers["retry-after"]) <= 900
    assert "ivr_admin_session" not in refused.headers.get("set-cookie", "")
    # Not even the right password is checked now...
    assert post_sign_in(client, "alice", "pw").status_code == 429
    assert len(password_checks) == 10
    # ...but another user signs in from the same address.
    assert post_sign_in(client, "bob", "bob's pw").status_code == 303
    assert password_checks[-1] == "bob's pw"
    # Once the window is over (its key expires), alice signs in again.
    with redis.Redis.from_url(redis_url) as store:
        assert 890 <= store.ttl("ivr:admin:throttle:user:alice") <= 900
        store.delete("ivr:admin:throttle:user:alice")
    assert post_sign_in(http_client(), "alice", "pw").status_code == 303


def test_a_successful_sign_in_clears_the_users_failures(
        http_client: Callable[..., httpx.Client], password_checks: list[str]) -> None:
    for _ in range(2):
        client = http_client()
        for attempt in range(9):
            assert post_sign_in(client, "alice", f"guess {attempt}").status_code == 403
        assert post_sign_in(client, "alice", "pw").status_code == 303
    assert len(password_checks) == 20


def test_one_address_trying_many_user_names_is_throttled_too(
        http_client: Callable[..., httpx.Client], password_checks: list[str]) -> None:
    client = http_client()
    for attempt in range(50):
        assert post_sign_in(client, f"user{attempt}", "guess").status_code == 403
    refused = post_sign_in(client, "bob", "bob's pw")
    assert refused.status_code == 429
    assert "from your address" in refused.text
    assert post_sign_in(client, "", "wrong token").status_code == 429
    assert len(password_checks) == 50


def test_at_most_two_passwords_are_hashed_at_once(
        http_client: Callable[..., httpx.Client], monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow(password: str, encoded: str) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return verify_password(password, encoded)

    monkeypatch.setattr(ivr.admin.pages, "verify_password", slow)
    clients = [http_client() for _ in range(6)]
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda c=c: statuses.append(
        post_sign_in(c, "bob", "bob's pw").status_code)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [303] * 6
    assert most == 2


# --- odd numbers in queries and forms -------------------------------------------------------------

@pytest.mark.parametrize("offset", [str(10**30), "99999", "-5", "abc", "²", "1e9"])
def test_any_audit_offset_shows_a_page(
        offset: str, alice_http: tuple[httpx.Client, str]) -> None:
    client, csrf = alice_http
    saved = client.post("/admin/queues/gold",
                        data={"csrf": csrf, "version": "1", "sip_uri": NEW_GOLD})
    assert saved.status_code == 303
    response = client.get("/admin/audit", params={"offset": offset})
    assert response.status_code == 200
    # Past the end (or nonsense) shows the newest page: here the one change.
    assert response.text.count("<tr>") == 2  # the heading row and the change
    assert NEW_GOLD in response.text


@pytest.mark.parametrize("version", [str(10**30), "²"])
def test_nonsense_version_numbers_in_forms_are_refused_not_a_crash(
        version: str, alice_http: tuple[httpx.Client, str], redis_url: str) -> None:
    client, csrf = alice_http
    rollback = client.post("/admin/queues/gold/rollback",
                           data={"csrf": csrf, "version": version, "current": "1"})
    assert rollback.status_code == 422
    saved = client.post("/admin/queues/gold",
                        data={"csrf": csrf, "version": version, "sip_uri": "http://bad"})
    assert saved.status_code == 422
    saved = client.post("/admin/queues/gold",
                        data={"csrf": csrf, "version": version, "sip_uri": NEW_GOLD})
    assert saved.status_code == 409
    assert stored(redis_url, "gold")["version"] == 1


def test_the_queue_page_explains_failover_as_it_works(
    alice_http: tuple[httpx.Client, str],
) -> None:
    """The hints once said failover was "not active yet", long after it was."""
    client, _ = alice_http
    html = client.get("/admin/queues/gold").text
    assert "dialled in order" in html and "dialled next" in html
    assert "not active" not in html and "not yet" not in html


def test_in_a_local_trial_the_page_signs_in_with_the_local_admin_token_and_says_where_it_is(
        make_settings: Callable[..., Settings], config_dir: Path,
        start_server: Callable[[Settings], ServerThread], redis_url: str) -> None:
    server = start_server(make_settings(twilio_auth_token=None))
    token_file = config_dir / "var" / "local_admin_token"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert str(token_file) in client.get("/admin/login").text
        assert post_sign_in(client, "", "not-the-token").status_code == 403
        signed_in = post_sign_in(client, "", token_file.read_text())
        assert signed_in.status_code == 303, signed_in.text
        saved = client.post("/admin/queues/gold", data={
            "csrf": csrf_in(client.get("/admin/").text), "version": "1", "sip_uri": NEW_GOLD})
        assert saved.status_code == 303
    assert stored(redis_url, "gold")["updated_by"] == "local admin token"


def test_a_restore_confirmed_after_another_change_asks_again_with_the_new_difference(
        http_client: Callable[..., httpx.Client], redis_url: str) -> None:
    alice, bob = http_client("alice"), http_client("bob", "bob's pw")
    csrf = csrf_in(alice.get("/admin/").text)
    assert alice.post("/admin/queues/gold", data={
        "csrf": csrf, "version": "1", "sip_uri": NEW_GOLD}).status_code == 303
    confirmation = bob.get("/admin/queues/gold/rollback", params={"version": "1"})
    assert confirmation.status_code == 200
    assert 'name="current" value="2"' in confirmation.text
    # Alice changes another field after Bob was shown what restoring changes.
    assert alice.post("/admin/queues/gold", data={
        "csrf": csrf, "version": "2", "message_to": "+15550100199"}).status_code == 303
    confirmed = bob.post("/admin/queues/gold/rollback", data={
        "csrf": csrf_in(confirmation.text), "version": "1", "current": "2", "confirmed": "1"})
    assert confirmed.status_code == 409
    assert "nothing was restored" in confirmed.text
    assert "Restoring it changes <strong>SIP URI, Messages to</strong>" in confirmed.text
    assert 'name="current" value="3"' in confirmed.text
    assert stored(redis_url, "gold")["version"] == 3


def test_a_restore_posted_without_confirming_only_shows_the_confirmation(
        alice_http: tuple[httpx.Client, str], redis_url: str) -> None:
    """A history form from before the confirmation existed (a tab left open) posts without it."""
    client, csrf = alice_http
    assert client.post("/admin/queues/gold", data={
        "csrf": csrf, "version": "1", "sip_uri": NEW_GOLD}).status_code == 303
    shown = client.post("/admin/queues/gold/rollback",
                        data={"csrf": csrf, "version": "1", "current": "2"})
    assert shown.status_code == 200
    assert "Restore version 1 of" in shown.text and 'name="confirmed" value="1"' in shown.text
    assert stored(redis_url, "gold")["version"] == 2


def test_restoring_a_version_with_the_current_values_has_nothing_to_restore(
        alice_http: tuple[httpx.Client, str], redis_url: str) -> None:
    """Restoring values the queue has wrote a version that changed nothing."""
    client, csrf = alice_http
    version_1 = {"csrf": csrf, "sip_uri": OLD_GOLD, "fallback_sip_uris": "", "overflow": "",
                 "message_to": "+15550100101", "display_name": "Gold members"}
    for version, uri in (("1", NEW_GOLD), ("2", OLD_GOLD)):
        assert client.post("/admin/queues/gold", data={
            **version_1, "version": version, "sip_uri": uri}).status_code == 303
    shown = client.get("/admin/queues/gold/rollback", params={"version": "1"})
    assert shown.status_code == 200
    assert "there is nothing to restore" in shown.text
    assert 'name="confirmed"' not in shown.text  # no button that would write
    # A confirmation posted anyway (from a page shown before the last change was undone).
    posted = client.post("/admin/queues/gold/rollback", data={
        "csrf": csrf, "version": "1", "current": "3", "confirmed": "1"}, follow_redirects=True)
    assert posted.status_code == 200
    assert ("Nothing to restore: version 1 has the values gold has now. gold is still "
            "version 3.") in posted.text
    assert stored(redis_url, "gold")["version"] == 3


@pytest.mark.parametrize("query", [{"version": "9"}, {"version": "x"}, {}])
def test_a_restore_link_to_no_version_says_so(
        query: dict[str, str], alice_http: tuple[httpx.Client, str]) -> None:
    client, _ = alice_http
    response = client.get("/admin/queues/gold/rollback", params=query)
    assert response.status_code in (404, 422)
    assert "no version 9" in response.text if query.get("version") == "9" else (
        "incomplete" in response.text)


def test_saving_an_unchanged_form_writes_nothing(
        alice_http: tuple[httpx.Client, str], redis_url: str) -> None:
    client, csrf = alice_http
    form = {"csrf": csrf, "version": "1", "sip_uri": f" {OLD_GOLD} ", "fallback_sip_uris": "",
            "overflow": "", "message_to": "+15550100101", "display_name": "Gold members"}
    response = client.post("/admin/queues/gold", data=form, follow_redirects=True)
    assert "Nothing to save: you changed no field. gold is still version 1." in response.text
    assert stored(redis_url, "gold")["version"] == 1


def test_a_save_writes_only_the_fields_the_admin_changed(
        alice_http: tuple[httpx.Client, str], redis_url: str) -> None:
    """What the form was opened with is version 1; only the fields that differ from it are the
    admin's, so a change made since to another field is never written back."""
    client, csrf = alice_http
    version_1 = {"csrf": csrf, "version": "1", "sip_uri": OLD_GOLD, "fallback_sip_uris": "",
                 "overflow": "", "message_to": "+15550100101", "display_name": "Gold members"}
    # Version 2, by someone else: a new SIP URI.
    assert client.post("/admin/queues/gold", data={**version_1, "sip_uri": NEW_GOLD}
                       ).status_code == 303
    # A form opened at version 1, only "Display name" edited: refused, then saved on top.
    refused = client.post("/admin/queues/gold", data={**version_1, "display_name": "Gold"})
    assert refused.status_code == 409
    assert f'value="{NEW_GOLD}"' in refused.text and 'value="Gold"' in refused.text
    again = client.post("/admin/queues/gold",
                        data={**version_1, "version": "2", "sip_uri": NEW_GOLD,
                              "display_name": "Gold"})
    assert again.status_code == 303
    record = stored(redis_url, "gold")
    assert (record["sip_uri"], record["display_name"], record["version"]) == (
        NEW_GOLD, "Gold", 3)
