"""The admin page at /admin, driven in a real headless Chromium (Debian's, through Playwright)
against the real app under uvicorn and a real Redis; the security checks use plain HTTP."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

import ivr.admin.pages
from ivr.admin.auth import hash_password, verify_password
from ivr.settings import Settings
from ivr.store import QUEUES_KEY
from tests.loyalty_api import GOLD
from tests.servers import ServerThread
from tests.twilio_client import FakeTwilio

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
def new_page(browser: Browser, server: ServerThread) -> Iterator[Callable[[], Page]]:
    """Each call opens a page in a browser context of its own (its own cookies: another admin)."""
    contexts = []

    def open_page() -> Page:
        context = browser.new_context(base_url=server.url)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[[], Page]) -> Page:
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


def test_one_click_in_the_history_rolls_back_to_version_1(
        page: Page, server: ServerThread) -> None:
    sign_in(page)
    open_queue(page, "gold")
    save_sip_uri(page, NEW_GOLD)
    page.locator("#version-1").get_by_role("button", name="Restore version 1").click()
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
    page.locator("#version-1").get_by_role("button", name="Restore version 1").click()
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
        new_page: Callable[[], Page], redis_url: str) -> None:
    alice, token_admin = new_page(), new_page()
    sign_in(alice)
    sign_in(token_admin, user="", password=ADMIN_TOKEN)
    open_queue(alice, "gold")
    open_queue(token_admin, "gold")
    assert save_sip_uri(alice, NEW_GOLD) == 303
    assert save_sip_uri(token_admin, "sip:gold@other-pbx.example.com") == 409
    expect(token_admin.get_by_role("alert")).to_contain_text("Someone else changed this queue")
    expect(token_admin.locator("#current .sip-uri")).to_have_text(NEW_GOLD)
    expect(token_admin.locator("#sip_uri")).to_have_value("sip:gold@other-pbx.example.com")
    assert stored(redis_url, "gold")["sip_uri"] == NEW_GOLD
    # Seen the other change, saving again is a deliberate overwrite.
    token_admin.get_by_role("button", name="Save").click()
    expect(token_admin.get_by_role("status")).to_have_text("Saved gold: version 3.")
    assert stored(redis_url, "gold")["updated_by"] == "admin token"


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
