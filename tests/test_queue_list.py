"""The queues a page at a time, and a search: the admin API's GET /queues (q, offset, limit),
the admin page (a search box, previous and next), in a real Chromium against the real app."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import Page, expect

from ivr.queues import Queue
from ivr.redis.client import connect
from ivr.redis.queue_store import QueueStore
from tests.servers import ServerThread
from tests.test_admin_page import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    browser,
    new_page,
    page,
    server,
    sign_in,
)

TEAMS = 120


def team(i: int) -> str:
    return f"team-{i:03d}"


def add_teams(redis_url: str) -> None:
    """TEAMS queues, written as the admin API writes them (the server follows by pub/sub)."""
    async def add() -> None:
        store = QueueStore(connect(redis_url))
        try:
            for i in range(TEAMS):
                extra = ({"fallback_sip_uris": ("sip:spare@backup-site.example.com",),
                          "message_to": "+15550109999"} if i == 7 else {})
                await store.put(team(i), Queue(
                    sip_uri=f"sip:{team(i)}@pbx-{'ab'[i % 2]}.example.com",
                    display_name=f"Support team {i}", **extra), "test")
        finally:
            await store.close()

    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, add()).result()


@pytest.fixture
def api(server: ServerThread, redis_url: str) -> Iterator[httpx.Client]:
    """The admin API of a server with TEAMS queues besides the shipped ones."""
    add_teams(redis_url)
    with httpx.Client(base_url=server.url + "/admin/api", timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


def names(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [queue["name"] for queue in answer.json()["queues"]]


def test_without_parameters_the_list_is_every_queue_as_before_paging(api: httpx.Client) -> None:
    answer = api.get("/queues").json()
    every = [queue["name"] for queue in answer["queues"]]
    assert every == sorted(every) and len(every) == answer["total"] >= TEAMS + 3
    assert {"gold", "platinum", "standard", team(0), team(TEAMS - 1)} <= set(every)
    assert (answer["offset"], answer["limit"]) == (0, None)


def test_pages_of_the_list_follow_each_other_by_name(api: httpx.Client) -> None:
    every = names(api.get("/queues"))
    pages = [api.get("/queues", params={"offset": offset, "limit": 50})
             for offset in range(0, len(every), 50)]
    assert [name for page_ in pages for name in names(page_)] == every
    assert [len(names(page_)) for page_ in pages[:-1]] == [50] * (len(pages) - 1)
    assert {page_.json()["total"] for page_ in pages} == {len(every)}
    assert names(api.get("/queues", params={"offset": len(every), "limit": 50})) == []


SEARCHES = {
    "TEAM-01": [team(i) for i in range(10, 20)],  # the name, in any case
    "support team 11": [team(11), *(team(i) for i in range(110, 120))],  # the display name
    "pbx-a.example": [team(i) for i in range(0, TEAMS, 2)],  # the SIP URI
    "backup-site": [team(7)],  # a fallback SIP URI
    "5550109999": [team(7)],  # where messages go
    "nothing like it": [],
}


def test_a_search_finds_queues_by_name_display_name_uri_or_number(api: httpx.Client) -> None:
    for search, found in SEARCHES.items():
        answer = api.get("/queues", params={"q": search})
        assert names(answer) == found and answer.json()["total"] == len(found), search


def test_a_search_is_paged_too(api: httpx.Client) -> None:
    answer = api.get("/queues", params={"q": "pbx-b", "offset": 10, "limit": 5})
    assert names(answer) == [team(i) for i in range(21, 31, 2)]
    assert answer.json()["total"] == TEAMS // 2


def test_a_list_asked_out_of_range_is_a_422_saying_what_is_allowed(api: httpx.Client) -> None:
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "ten"}, {"offset": -1},
                   {"offset": 10**10}, {"q": "x" * 201}):
        answer = api.get("/queues", params=params)
        assert answer.status_code == 422, params
        assert re.search(r"(limit 1 to 1000|integers|at most 200)", answer.text), params


def test_the_queues_page_shows_a_page_at_a_time_with_previous_and_next(
        api: httpx.Client, page: Page) -> None:
    total = api.get("/queues").json()["total"]
    sign_in(page)
    rows = page.locator("table.queues tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#queue-count")).to_have_text(f"1 to 50 of {total} queues")
    expect(page.get_by_role("link", name="← Previous")).to_have_count(0)
    page.get_by_role("link", name="Next →").click()
    expect(page.locator("#queue-count")).to_have_text(f"51 to 100 of {total} queues")
    expect(page.locator(f"#queue-{team(50)}")).to_be_visible()
    page.get_by_role("link", name="Next →").click()
    expect(page.locator("#queue-count")).to_have_text(f"101 to {total} of {total} queues")
    expect(page.get_by_role("link", name="Next →")).to_have_count(0)
    expect(rows).to_have_count(total - 100)
    page.get_by_role("link", name="← Previous").click()
    expect(page.locator("#queue-count")).to_have_text(f"51 to 100 of {total} queues")


def test_the_search_box_finds_queues_and_pages_through_what_it_found(
        api: httpx.Client, page: Page) -> None:
    sign_in(page)
    page.get_by_label("Find a queue").fill("PBX-B")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#queue-count")).to_have_text(f"1 to 50 of {TEAMS // 2} queues with “PBX-B”")
    expect(page.locator(f"#queue-{team(1)}")).to_be_visible()
    expect(page.locator(f"#queue-{team(0)}")).to_have_count(0)
    expect(page.get_by_label("Find a queue")).to_have_value("PBX-B")
    page.get_by_role("link", name="Next →").click()
    expect(page.locator("#queue-count")).to_have_text(
        f"51 to {TEAMS // 2} of {TEAMS // 2} queues with “PBX-B”")
    expect(page.locator(f"#queue-{team(TEAMS - 1)}")).to_be_visible()
    page.get_by_label("Find a queue").fill("no such queue")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#queue-count")).to_contain_text("No queue has “no such queue”")
    page.get_by_role("link", name="Show all").click()
    expect(page.locator(f"#queue-{team(0)}")).to_be_visible()
    expect(page.locator("table.queues tbody tr")).to_have_count(50)
