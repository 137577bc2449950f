"""The admin page's Flows section, driven in a real headless Chromium (Debian's, through
Playwright) against the real app under uvicorn and a real Redis: the live version and its flows,
the versions, a diff, and rolling back after a confirmation. Versions are published into the
test's Redis with ivr.flow_versions.publish, as the admin API does."""

# The browser fixtures are test_admin_page's, imported by name: the tests' parameters name them.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
import redis.asyncio as aioredis
from playwright.sync_api import Browser, Page, expect

from ivr.flow_versions import FlowChecks, publish, unified_diffs
from ivr.redis.flow_store import LIVE_KEY, FlowStore
from ivr.redis.queue_store import QueueStore
from tests.servers import ServerThread
from tests.test_admin_page import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    ARTIFACTS,
    PHONE,
    browser,
    new_page,
    page,
    server,
    sign_in,
)

TEAM_CHOICE = "team_choice.yaml"
OLD_PROMPT = "Sorry, I didn't catch that."
NEW_PROMPT = "Sorry, that was not 1 or 2."
SWITCH_DELAY = 5.0  # a process follows a publish by pub/sub, within a moment


def flow_files(config_dir: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8")
            for path in sorted((config_dir / "flows").glob("*.yaml"))}


def publish_flows(redis_url: str, files: dict[str, str], who: str, message: str) -> int:
    """Publish `files` as the admin API would (checked against the live queues); the version."""

    async def published() -> int:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            queues = QueueStore(client)
            done = await publish(FlowStore(client), queues, FlowChecks(secrets=()), files, who,
                                 message)
            return done.version.version
        finally:
            await client.aclose()

    # Playwright's sync API runs an event loop on this thread: the publish runs on another.
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, published()).result()


def live_version(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        return int(client.get(LIVE_KEY) or 0)


def with_new_prompt(config_dir: Path) -> dict[str, str]:
    files = flow_files(config_dir)
    assert OLD_PROMPT in files[TEAM_CHOICE]
    files[TEAM_CHOICE] = files[TEAM_CHOICE].replace(OLD_PROMPT, NEW_PROMPT)
    return files


def open_flows(page: Page) -> None:
    page.get_by_role("navigation").get_by_role("link", name="Flows").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Flows")


# --- the live version ---------------------------------------------------------------------------

def test_the_flows_page_shows_the_live_version_and_each_flow_with_its_numbers_and_queues(
        page: Page) -> None:
    sign_in(page)
    open_flows(page)
    live = page.locator("#live")
    expect(live).to_contain_text("1, seeded from files")
    expect(live.locator("dd").nth(1)).to_contain_text("seed at")
    expect(live).to_contain_text("team_choice.yaml")
    team = page.locator("#flow-team_choice")
    expect(team.locator(".channels")).to_have_text("voice, messaging")
    expect(team.locator(".numbers")).to_contain_text("+15005550102")  # the company's: unmasked
    expect(team.locator(".queues a")).to_have_text(["operator", "sales", "support"])
    expect(team.locator(".fallback a")).to_have_text("support")
    loyalty = page.locator("#flow-loyalty_routing")
    expect(loyalty.get_by_role("heading", level=2)).to_contain_text("default")
    expect(loyalty.locator(".numbers")).to_contain_text("the default for voice and messaging")
    expect(page.locator("#flow-shift_routing .channels")).to_have_text("voice")
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    expect(page.locator("#version-1")).to_contain_text("live")
    team.locator(".queues").get_by_role("link", name="sales").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Queue sales")


def test_each_flow_is_drawn_step_by_step_with_its_exits_and_its_routes_open_their_queue(
        page: Page) -> None:
    sign_in(page)
    open_flows(page)
    graph = page.locator("#graph-loyalty_routing svg")
    expect(graph).to_be_visible()
    expect(graph.locator('[data-step="lookup"]')).to_have_text(re.compile(r"lookup\s*fetch"))
    expect(graph.locator('[data-step="by_tier"] polygon')).to_have_count(1)  # a decision
    expect(graph.locator(".edge-label")).to_have_text(
        ["next, on_error", "gold", "platinum", "else", "next", "next", "next"])
    expect(graph.locator("path.edge")).to_have_count(8)  # the start's arrow too
    for name in ("language_routing", "new_vs_returning", "shift_routing", "team_choice",
                 "vip_by_email"):
        expect(page.locator(f"#graph-{name} svg")).to_be_visible()
    expect(page.locator("#graph-language_routing path.edge.loop")).to_have_count(1)
    expect(page.locator("#graph-team_choice path.edge.unanswered")).to_have_count(3)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#flow-language_routing").screenshot(
        path=str(ARTIFACTS / "admin-flows-graph.png"))
    graph.locator('[data-step="to_platinum"]').get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Queue platinum")


# --- versions, diff, rollback -------------------------------------------------------------------

def roll_back_from_the_versions(page: Page, version: int) -> None:
    page.locator(f"#version-{version}").get_by_role(
        "link", name=f"Roll back to version {version}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Roll the flows back to version {version}?")


def test_a_published_version_is_listed_diffed_and_rolled_back_after_a_confirmation(
        page: Page, redis_url: str, config_dir: Path) -> None:
    assert publish_flows(redis_url, with_new_prompt(config_dir), "carol",
                         "shorter retry prompt") == 2
    sign_in(page)
    open_flows(page)
    expect(page.locator("#live")).to_contain_text("shorter retry prompt")
    expect(page.locator("#versions tbody tr")).to_have_count(2)
    expect(page.locator("#version-2")).to_contain_text("carol")
    expect(page.locator("#version-2")).to_contain_text("live")
    expect(page.locator("#version-1")).to_contain_text("seed")

    page.locator("#version-1").get_by_role("link", name="Diff against live").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Version 1 against version 2 (live)")
    expect(page.locator("#diff .changed-files")).to_have_text("team_choice.yaml: changed")
    # Marked by the line's sign and as an insertion or deletion, not by colour alone.
    expect(page.locator("#diff del.removed")).to_have_text(
        [f'-    retry_prompt: "{OLD_PROMPT}"'])
    expect(page.locator("#diff ins.added")).to_have_text([f'+    retry_prompt: "{NEW_PROMPT}"'])
    expect(page.locator("#diff .file").first).to_have_text("--- v1/team_choice.yaml")

    page.goto("/admin/flows")
    page.get_by_label("Compare version").select_option("2")
    page.get_by_label("with version").select_option("1")
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Version 2 (live) against version 1")
    expect(page.locator("#diff ins.added")).to_have_text([f'+    retry_prompt: "{OLD_PROMPT}"'])

    page.goto("/admin/flows")
    roll_back_from_the_versions(page, 1)
    expect(page.locator("#rollback-summary")).to_contain_text(
        "changes 1 file, from the live version 2 to version 1")
    expect(page.locator("#rollback ins.added")).to_have_text([f'+    retry_prompt: "{OLD_PROMPT}"'])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-flows-rollback.png"), full_page=True)
    assert live_version(redis_url) == 2  # nothing written by showing it
    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Flows")
    assert live_version(redis_url) == 2

    roll_back_from_the_versions(page, 1)
    page.get_by_role("button", name="Roll back to version 1").click()
    expect(page.get_by_role("status")).to_have_text(
        "Rolled the flows back to version 1: it is now live as version 3.")
    assert live_version(redis_url) == 3
    expect(page.locator("#version-3")).to_contain_text("live")
    expect(page.locator("#version-3")).to_contain_text("alice")
    expect(page.locator("#version-3")).to_contain_text("rolled back to version 1")
    expect(page.locator("#live")).to_contain_text("3, rolled back to version 1")


def test_rolling_back_to_the_flows_that_are_live_has_nothing_to_do(
        page: Page, redis_url: str, config_dir: Path) -> None:
    publish_flows(redis_url, with_new_prompt(config_dir), "carol", "shorter retry prompt")
    publish_flows(redis_url, flow_files(config_dir), "carol", "back as it was")  # v3 = v1
    sign_in(page)
    page.goto("/admin/flows/rollback?version=1")
    expect(page.locator("#rollback-summary")).to_have_text(
        "Version 1 has the flows that are live now (version 3): there is nothing to roll back.")
    expect(page.get_by_role("button", name="Roll back to version 1")).to_have_count(0)


def test_a_rollback_is_refused_when_someone_published_since_the_confirmation_was_shown(
        page: Page, redis_url: str, config_dir: Path) -> None:
    publish_flows(redis_url, with_new_prompt(config_dir), "carol", "shorter retry prompt")
    sign_in(page)
    page.goto("/admin/flows")
    roll_back_from_the_versions(page, 1)
    other = with_new_prompt(config_dir)
    other[TEAM_CHOICE] = other[TEAM_CHOICE].replace("Connecting you to sales.",
                                                     "One moment for sales.")
    assert publish_flows(redis_url, other, "dave", "sales greeting") == 3
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Roll back to version 1").click()
    assert posted.value.status == 409
    expect(page.get_by_role("alert")).to_contain_text(
        "Someone published flows version 3 since this page was shown, so nothing was rolled "
        "back.")
    assert live_version(redis_url) == 3
    # The page now shows what rolling back changes from version 3, both of its changes.
    expect(page.locator("#rollback-summary")).to_contain_text("from the live version 3")
    expect(page.locator("#rollback ins.added")).to_have_text([
        f'+    retry_prompt: "{OLD_PROMPT}"', '+    voice: "Connecting you to sales."'])
    page.get_by_role("button", name="Roll back to version 1").click()
    expect(page.get_by_role("status")).to_have_text(
        "Rolled the flows back to version 1: it is now live as version 4.")
    assert live_version(redis_url) == 4


def delete_queue_once_unused(server: ServerThread, name: str) -> None:
    """Delete a queue through the admin API, once the server follows a version that no longer
    routes to it (it refuses while its flows do)."""
    deadline = time.monotonic() + SWITCH_DELAY
    while True:
        response = httpx.delete(f"{server.url}/admin/api/queues/{name}",
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        if response.status_code < 300:
            return
        assert time.monotonic() < deadline, response.text
        time.sleep(0.05)


def test_a_rollback_to_flows_that_route_to_a_deleted_queue_is_refused_with_each_problem(
        page: Page, server: ServerThread, redis_url: str, config_dir: Path) -> None:
    files = flow_files(config_dir)
    files[TEAM_CHOICE] = files[TEAM_CHOICE].replace("queue: operator", "queue: support")
    publish_flows(redis_url, files, "carol", "no operator queue any more")
    delete_queue_once_unused(server, "operator")
    sign_in(page)
    page.goto("/admin/flows")
    roll_back_from_the_versions(page, 1)
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Roll back to version 1").click()
    assert posted.value.status == 422
    expect(page.get_by_role("alert")).to_contain_text(
        "Version 1 cannot be rolled back to: its flows no longer fit the live queues")
    expect(page.locator("#rollback-problems li")).to_have_count(1)
    expect(page.locator("#rollback-problems li")).to_contain_text(
        re.compile(r"team_choice\.yaml.*to_operator.*operator"))
    assert live_version(redis_url) == 2


def test_a_rollback_form_without_the_session_token_is_refused(
        page: Page, redis_url: str, config_dir: Path) -> None:
    publish_flows(redis_url, with_new_prompt(config_dir), "carol", "shorter retry prompt")
    sign_in(page)
    page.goto("/admin/flows")
    response = page.request.post("/admin/flows/rollback", form={
        "version": "1", "current": "2", "confirmed": "1", "csrf": "not-the-token"})
    assert response.status == 403
    assert live_version(redis_url) == 2


def test_a_diff_reads_line_under_line_and_copies_as_the_diff(
        page: Page, redis_url: str, config_dir: Path) -> None:
    """Each line a box inside the <pre>: no blank line between two, and its text the diff."""
    v1 = flow_files(config_dir)
    v2 = with_new_prompt(config_dir)
    publish_flows(redis_url, v2, "carol", "shorter retry prompt")
    sign_in(page)
    page.goto("/admin/flows/diff?from=1")
    expect(page.locator("#diff-summary")).to_have_text(
        "From version 1 to version 2, 1 file differs:")
    shown = page.locator("#diff pre.diff")
    assert shown.evaluate("pre => pre.innerText") == unified_diffs(v1, v2, "v1", "v2 (live)")
    boxes = [line.bounding_box() for line in page.locator("#diff .diff-line").all()]
    assert len(boxes) == len(unified_diffs(v1, v2, "v1", "v2").splitlines())
    for above, below in zip(boxes, boxes[1:]):
        assert above is not None and below is not None
        assert abs(below["y"] - (above["y"] + above["height"])) < 1, (above, below)


def test_a_diff_of_a_version_that_does_not_exist_says_so(page: Page) -> None:
    sign_in(page)
    page.goto("/admin/flows/diff?from=9")
    expect(page.get_by_role("heading", level=1)).to_have_text("No such version")
    expect(page.locator("main")).to_contain_text("There is no flows version 9.")


def test_the_audit_log_shows_who_published_and_rolled_back_the_flows(
        page: Page, redis_url: str, config_dir: Path) -> None:
    publish_flows(redis_url, with_new_prompt(config_dir), "carol", "shorter retry prompt")
    sign_in(page)
    page.goto("/admin/flows/rollback?version=1")
    page.get_by_role("button", name="Roll back to version 1").click()
    expect(page.get_by_role("status")).to_contain_text("it is now live as version 3")
    page.get_by_role("link", name="Audit log").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(2)  # the seed is no admin's change
    expect(rows.nth(0).locator("td")).to_have_text([
        re.compile(r"UTC"), "alice", "rolled the flows back to version 1 now flows version 3",
        "flows version 3", "rollback to version 1"])
    expect(rows.nth(1).locator("td")).to_have_text([
        re.compile(r"UTC"), "carol", "published flows now flows version 2", "flows version 2",
        "shorter retry prompt"])
    rows.nth(1).get_by_role("link", name="flows version 2").click()
    expect(page).to_have_url(re.compile(r"/admin/flows#version-2$"))
    expect(page.locator("#version-2")).to_contain_text("carol")


def test_on_a_phone_no_flows_page_scrolls_sideways(
        browser: Browser, server: ServerThread, redis_url: str, config_dir: Path) -> None:
    publish_flows(redis_url, with_new_prompt(config_dir), "carol", "shorter retry prompt")
    context = browser.new_context(base_url=server.url, viewport=PHONE)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        sign_in(page)
        widths = {}
        for path in ("/admin/flows", "/admin/flows/diff?from=1", "/admin/flows/rollback?version=1",
                     "/admin/audit"):
            page.goto(path)
            widths[path] = page.evaluate("document.documentElement.scrollWidth")
        assert widths == dict.fromkeys(widths, PHONE["width"])
        page.goto("/admin/flows")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "admin-flows-phone.png"), full_page=True)
    finally:
        context.close()
