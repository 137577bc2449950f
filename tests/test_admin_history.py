"""Admin history read a page at a time and trimmed as it is written: a queue's versions, the
flows versions and the audit log, through the store, the API and the CLI (issue 18, item 2)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, expect

from ivr.flow_versions import FlowChecks, rollback
from ivr.queues import Queue
from ivr.redis.client import connect
from ivr.redis.flow_store import COUNTER_KEY, FILES_KEY, VERSIONS_KEY, FlowStore, VersionNotKept
from ivr.redis.queue_store import AUDIT_KEY, QueueStore, VersionNotKept as QueueVersionNotKept
from ivr.redis.queue_store import history_key
from ivr.redis.retention import MIN_FLOW_VERSIONS_KEPT, Retention
from ivr.settings import Settings
from tests.conftest import IVR, clean_env
from tests.servers import ServerThread
from tests.test_admin_page import USERS, browser, sign_in  # noqa: F401 (browser: a fixture)

ADMIN = "history-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
T = TypeVar("T")


def with_stores(redis_url: str, operation: Callable[[QueueStore, FlowStore], Awaitable[T]],
                retention: Retention | None = None) -> T:
    async def go() -> T:
        queues = QueueStore(connect(redis_url), retention)
        try:
            return await operation(queues, FlowStore(queues.redis, retention))
        finally:
            await queues.close()

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: Playwright's runs a loop
        return pool.submit(asyncio.run, go()).result()


def write_versions(redis_url: str, count: int, retention: Retention | None = None,
                   name: str = "gold") -> None:
    """`count` new versions of queue `name`, each a different SIP URI, through the store."""
    async def write(queues: QueueStore, flows: FlowStore) -> None:
        for n in range(count):
            await queues.put(name, Queue(sip_uri=f"sip:{name}-{n}@pbx.example.com"), "bot")

    with_stores(redis_url, write, retention)


def publish_versions(redis_url: str, count: int, retention: Retention | None = None) -> None:
    async def publish(queues: QueueStore, flows: FlowStore) -> None:
        for n in range(count):
            await flows.publish({"a.yaml": f"# version {n}\n"}, "bot", f"change {n}")

    with_stores(redis_url, publish, retention)


@pytest.fixture
def admin(make_settings: Callable[..., Settings],
          start_server: Callable[[Settings], ServerThread]) -> Callable[..., httpx.Client]:
    """A server with the admin token (and any settings given); a client of its admin API."""
    clients: list[httpx.Client] = []

    def start(**settings: Any) -> httpx.Client:
        server = start_server(make_settings(admin_token=ADMIN, **settings))
        client = httpx.Client(base_url=server.url + "/admin/api", headers=AUTH, timeout=30)
        client.server_url = server.url  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


# --- in pages -------------------------------------------------------------------------------

def test_a_queues_history_comes_in_pages_newest_first_each_naming_the_next(
        admin: Callable[..., httpx.Client], redis_url: str) -> None:
    api = admin()
    write_versions(redis_url, 119)  # gold was seeded as version 1: 120 versions
    first = api.get("/queues/gold/history").json()
    assert [v["version"] for v in first["versions"]] == list(range(120, 70, -1))  # 50 by default
    assert (first["next_before"], first["oldest"]) == (71, 1)
    second = api.get("/queues/gold/history", params={"before": 71, "limit": 60}).json()
    assert [v["version"] for v in second["versions"]] == list(range(70, 10, -1))
    last = api.get("/queues/gold/history", params={"before": second["next_before"]}).json()
    assert [v["version"] for v in last["versions"]] == list(range(10, 0, -1))
    assert last["next_before"] is None
    # What each version changed is from the one below it, across a page's edge too.
    assert first["versions"][-1]["changed"] == ["sip_uri"]
    assert last["versions"][-1]["changed"] == ["sip_uri", "message_to", "display_name"]
    beyond = api.get("/queues/gold/history", params={"before": 1}).json()
    assert (beyond["versions"], beyond["next_before"]) == ([], None)


@pytest.mark.parametrize(("query", "field"), [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"limit": "²"}, "limit"), ({"before": "0"}, "before"),
    ({"before": "v3"}, "before"), ({"before": "1.5"}, "before")])
def test_a_history_page_asked_for_with_a_bad_limit_or_before_is_a_422_naming_it(
        admin: Callable[..., httpx.Client], query: dict[str, str], field: str) -> None:
    api = admin()
    for path in ("/queues/gold/history", "/flows/versions"):
        response = api.get(path, params=query)
        assert response.status_code == 422, path
        [problem] = response.json()["errors"]
        assert problem["field"] == field
        assert problem["message"].startswith(f"{field} must be")
    assert api.get("/queues/gold/history", params={"limit": "500"}).status_code == 200


def test_the_flows_versions_come_in_pages_newest_first_with_the_live_one_marked(
        admin: Callable[..., httpx.Client], redis_url: str) -> None:
    api = admin()
    publish_versions(redis_url, 59)  # after the seed: 60 versions, the newest live
    first = api.get("/flows/versions", params={"limit": 25}).json()
    assert [v["version"] for v in first["versions"]] == list(range(60, 35, -1))
    assert [v["live"] for v in first["versions"][:2]] == [True, False]
    assert (first["live"], first["next_before"], first["oldest"]) == (60, 36, 1)
    rest = api.get("/flows/versions", params={"before": 36}).json()
    assert [v["version"] for v in rest["versions"]] == list(range(35, 0, -1))
    assert rest["next_before"] is None


def test_a_page_reads_only_its_own_versions_not_the_whole_history(redis_url: str) -> None:
    """A page's versions are fetched by number (HMGET), so its cost does not grow with the
    history: nothing reads every version (HGETALL, HVALS), and a version outside the page,
    made unreadable, is not even parsed."""
    write_versions(redis_url, 30)
    publish_versions(redis_url, 3)
    with redis.Redis.from_url(redis_url) as client:
        client.hset(history_key("gold"), "5", "{not json")
        client.hset(VERSIONS_KEY, "1", "{not json")
        client.config_resetstat()
    page = with_stores(redis_url, lambda queues, flows: queues.history("gold", 10, before=20))
    assert [record.version for record in page.versions] == list(range(19, 9, -1))
    assert page.below is not None and page.below.version == 9
    versions = with_stores(redis_url, lambda queues, flows: flows.versions(2))
    assert [version.version for version in versions.versions] == [3, 2]
    with redis.Redis.from_url(redis_url) as client:
        called = client.info("commandstats")
    assert {"cmdstat_hgetall", "cmdstat_hvals", "cmdstat_hkeys"}.isdisjoint(called)
    assert called["cmdstat_hmget"]["calls"] == 2


# --- retention ------------------------------------------------------------------------------

def test_queue_versions_beyond_the_kept_number_are_trimmed_as_they_are_written(
        redis_url: str) -> None:
    retention = Retention(queue_versions=5, audit_entries=7)
    write_versions(redis_url, 20, retention)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert sorted(map(int, client.hkeys(history_key("gold")))) == [16, 17, 18, 19, 20]
        assert client.llen(AUDIT_KEY) == 7
        assert json.loads(client.lindex(AUDIT_KEY, 0))["version"] == 20
    page = with_stores(redis_url, lambda queues, flows: queues.history("gold", 50))
    assert [record.version for record in page.versions] == [20, 19, 18, 17, 16]
    assert (page.oldest, page.next_before, page.below) == (16, None, None)

    async def roll_back(queues: QueueStore, flows: FlowStore) -> None:
        await queues.rollback("gold", 3, "alice")

    with pytest.raises(QueueVersionNotKept, match="version 3 of queue 'gold' is no longer "
                       "kept: the oldest kept is 16"):
        with_stores(redis_url, roll_back, retention)


def test_versions_replaced_longer_ago_than_the_age_go_and_so_do_old_audit_entries(
        redis_url: str) -> None:
    """With an age, a version goes once the one after it is older than that (however old it
    is itself, the one just replaced stays). Audit entries older than the age go too."""
    write_versions(redis_url, 4)
    long_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat(timespec="milliseconds")
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        for version in (1, 2, 3, 4):
            record = json.loads(client.hget(history_key("gold"), str(version)))
            client.hset(history_key("gold"), str(version),
                        json.dumps({**record, "updated_at": long_ago}))
        for index in (-1, -2):  # the two oldest audit entries
            entry = json.loads(client.lindex(AUDIT_KEY, index))
            client.lset(AUDIT_KEY, index, json.dumps({**entry, "at": long_ago}))
    retention = Retention(days=2)

    async def touch(queues: QueueStore, flows: FlowStore) -> None:
        await queues.put("silver", Queue(sip_uri="sip:silver@pbx.example.com"), "bot")

    with_stores(redis_url, touch, retention)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        # A change to another queue trims the audit, not gold's versions; nothing there is new.
        assert client.hlen(history_key("gold")) == 4
        assert client.llen(AUDIT_KEY) == 3
    write_versions(redis_url, 1, retention)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        # 1-3 were replaced three days ago; 4 was replaced just now; 5 is current.
        assert sorted(map(int, client.hkeys(history_key("gold")))) == [4, 5]


def test_flows_versions_are_trimmed_with_their_files_keeping_the_live_and_recent_ones(
        redis_url: str) -> None:
    publish_versions(redis_url, 30, Retention(flow_versions=12))
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert sorted(map(int, client.hkeys(VERSIONS_KEY))) == list(range(19, 31))
        assert sorted(map(int, client.hkeys(FILES_KEY))) == list(range(19, 31))
        assert client.get(COUNTER_KEY) == "30"
    # Below the floor, or by an age all versions are past, the newest ones stay for the
    # sessions pinned to them.
    publish_versions(redis_url, 3, Retention(flow_versions=2, days=0.000001))
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.hlen(VERSIONS_KEY) == client.hlen(FILES_KEY) == MIN_FLOW_VERSIONS_KEPT
        assert int(max(client.hkeys(VERSIONS_KEY), key=int)) == 33

    async def roll_back(queues: QueueStore, flows: FlowStore) -> None:
        await rollback(flows, queues, FlowChecks(secrets=()), 5, "alice")

    with pytest.raises(VersionNotKept, match="flows version 5 is no longer kept: the oldest "
                       "kept is 24"):
        with_stores(redis_url, roll_back)


def test_every_admin_change_trims_the_audit_log_purges_and_publishes_too(
        admin: Callable[..., httpx.Client], redis_url: str) -> None:
    api = admin(audit_entries_kept=3, queue_versions_kept=2)
    for n in range(3):
        assert api.patch("/queues/gold", json={"sip_uri": f"sip:g{n}@pbx.example.com"}
                         ).status_code == 200
    assert api.post("/cache/purge", json={"flow": "loyalty_routing", "step": "lookup"}
                    ).status_code == 200
    files = api.get("/flows").json()["files"]
    assert api.post("/flows/versions", json={
        "files": {name: text + "\n# again\n" for name, text in files.items()},
        "message": "again"}).status_code == 201
    audit = api.get("/audit").json()
    assert audit["total"] == 3
    assert [entry["action"] for entry in audit["entries"]] == ["flows_publish", "purge",
                                                               "update"]
    refused = api.post("/queues/gold/rollback", json={"version": 1})
    assert refused.status_code == 404
    assert refused.json()["error"] == ("not found: version 1 of queue 'gold' is no longer kept: "
                                       "the oldest kept is 3 (IVR_QUEUE_VERSIONS_KEPT, "
                                       "IVR_ADMIN_HISTORY_DAYS)")
    history = api.get("/queues/gold/history").json()
    assert [(v["version"], v["changed"]) for v in history["versions"]] == [
        (4, ["sip_uri"]), (3, None)]  # what 3 changed from 2 is no longer known


def test_a_flows_version_count_below_the_floor_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 10"):
        Settings(_env_file=None, flow_versions_kept=3)


# --- the command line -----------------------------------------------------------------------

def ivr_at(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IVR, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          env=clean_env(IVR_ADMIN_URL=url, IVR_ADMIN_TOKEN=ADMIN,
                                        IVR_FLOWS_DIR=str(cwd / "flows")),
                          capture_output=True, text=True, timeout=60)


def test_queues_history_pages_with_limit_and_before_and_names_the_next_page(
        admin: Callable[..., httpx.Client], redis_url: str, config_dir: Path) -> None:
    url = admin(queue_versions_kept=8).server_url  # type: ignore[attr-defined]
    write_versions(redis_url, 11, Retention(queue_versions=8))  # 1-12 written, 5-12 kept
    first = ivr_at(url, config_dir, "queues", "history", "gold", "--limit", "3")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ["12", "11", "10"]
    assert lines[-1] == "older versions: ivr queues history gold --before 10"
    last = ivr_at(url, config_dir, "queues", "history", "gold", "--before", "7")
    lines = last.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["6", "5"]
    assert lines[-1].endswith("(the version before is not kept)")
    gone = ivr_at(url, config_dir, "queues", "rollback", "gold", "2", "--yes")
    assert (gone.returncode, gone.stderr) == (1, "ivr: version 2 of queue 'gold' is no longer "
                                              "kept: the oldest kept is 5 (see `ivr queues "
                                              "history gold`)\n")
    kept = ivr_at(url, config_dir, "queues", "rollback", "gold", "5", "--yes")
    assert kept.stdout.startswith("gold rolled back to version 5: now version 13")
    bad = ivr_at(url, config_dir, "queues", "history", "gold", "--limit", "0")
    assert bad.returncode == 2 and "'0' is not a whole number from 1" in bad.stderr
    too_many = ivr_at(url, config_dir, "queues", "history", "gold", "--limit", "501")
    assert (too_many.returncode, too_many.stderr) == (
        1, "ivr: 422: invalid input\n  limit: limit must be a whole number from 1 to 500 "
        "(default 50)\n")


def test_flows_versions_pages_and_a_rollback_to_a_trimmed_version_names_the_oldest_kept(
        admin: Callable[..., httpx.Client], redis_url: str, config_dir: Path) -> None:
    url = admin(flow_versions_kept=10).server_url  # type: ignore[attr-defined]
    publish_versions(redis_url, 14, Retention(flow_versions=10))  # 15 versions, 6-15 kept
    listed = ivr_at(url, config_dir, "flows", "versions", "--limit", "4")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ["15", "14", "13", "12"]
    assert lines[1].split()[1] == "live"
    assert lines[-1] == "older versions: ivr flows versions --before 12"
    gone = ivr_at(url, config_dir, "flows", "rollback", "2", "--yes")
    assert (gone.returncode, gone.stderr) == (1, "ivr: flows version 2 is no longer kept: the "
                                              "oldest kept is 6 (see `ivr flows versions`)\n")


# --- the admin page (Chromium) --------------------------------------------------------------

@pytest.fixture
def page_server(make_settings: Callable[..., Settings],
                start_server: Callable[[Settings], ServerThread]) -> ServerThread:
    return start_server(make_settings(admin_token=ADMIN, admin_users=USERS,
                                      queue_versions_kept=55))


@pytest.fixture
def page(browser: Browser, page_server: ServerThread) -> Iterator[Page]:
    context = browser.new_context(base_url=page_server.url)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def test_the_queue_page_shows_its_newest_versions_with_a_link_to_older_ones(
        page: Page, redis_url: str) -> None:
    write_versions(redis_url, 59, Retention(queue_versions=55))  # 60 versions, 6-60 kept
    sign_in(page)
    page.goto("/admin/queues/gold")
    rows = page.locator("#history tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_id("version-60")
    expect(page.locator("#history .pager .newest")).to_have_count(0)
    page.locator("#history").get_by_role("link", name="Older versions →").click()
    expect(page).to_have_url(re.compile(r"/admin/queues/gold\?before=11#history$"))
    expect(rows).to_have_count(5)
    expect(rows.last).to_have_id("version-6")
    expect(page.locator("#history .pager .older")).to_have_count(0)
    expect(page.locator("#history h2")).to_contain_text("versions before 11")
    page.locator("#history").get_by_role("link", name="← Newest versions").click()
    expect(rows.first).to_have_id("version-60")
    page.goto("/admin/queues/gold/rollback?version=3")
    expect(page.locator("main")).to_contain_text(
        "Version 3 of queue 'gold' is no longer kept: the oldest kept is 6")


def test_the_flows_page_shows_the_newest_versions_with_a_link_to_older_ones(
        page: Page, redis_url: str) -> None:
    publish_versions(redis_url, 54)  # 55 versions
    sign_in(page)
    page.goto("/admin/flows")
    rows = page.locator("#versions tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_id("version-55")
    expect(page.locator("#live .version")).to_have_text("55")
    page.locator("#versions").get_by_role("link", name="Older versions →").click()
    expect(page).to_have_url(re.compile(r"/admin/flows\?before=6#versions$"))
    expect(rows).to_have_count(5)
    expect(rows.last).to_have_id("version-1")
    expect(page.locator("#live .version")).to_have_text("55")
