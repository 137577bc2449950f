"""`ivr serve --watch-flows`: a saved flow file is published at once, by the `ivr serve`
parent alone; broken flows are told and the live version stays."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests import loyalty_api as L
from tests.conftest import Served
from tests.test_flow_versions_cli import LOYALTY, PLATINUM_SIP, route_gold_to


def flow_version(server: Served) -> int:
    return httpx.get(server.url + "/readyz", timeout=10).json()["flow_version"]


def saved_until(server: Served, save: Callable[[], None], seen: Callable[[], bool]) -> None:
    """Save, and save again (an editor's save) until `seen`: a save made before the watch
    had started is not missed."""
    deadline = time.monotonic() + 30
    while True:
        save()
        retry = time.monotonic() + 1.0
        while time.monotonic() < retry:
            if seen():
                return
            assert server.process.poll() is None, server.log.read_text()
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.02)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_saved_flow_is_published_by_the_parent_and_a_broken_one_keeps_the_live_version(
    newcomer_serve: Callable[..., Served], workers: str
) -> None:
    server = newcomer_serve("--watch-flows", "--workers", workers)
    flows = server.cwd / "flows"
    assert flow_version(server) == 1
    saved_until(server, lambda: route_gold_to(flows, "platinum"),
                lambda: flow_version(server) == 2)
    assert PLATINUM_SIP in server.call(L.GOLD).stdout

    broken = flows / "broken.yaml"
    saved_until(server, lambda: broken.write_text("trigger: [unclosed\n"),
                lambda: "broken.yaml: line " in server.log.read_text())
    log = server.log.read_text()
    assert ("ivr: --watch-flows: unchanged: the live version 1 has these flows already"
            in log.splitlines())  # at start: the draft was version 1
    assert ("ivr: --watch-flows: published version 2 (changed loyalty_routing.yaml)"
            in log.splitlines())
    assert "ivr: --watch-flows: not published (1 problem); the live version stays:" in log
    assert log.count("published version 2 ") == 1  # by the parent, not by each worker
    assert flow_version(server) == 2

    broken.unlink()
    newest = versions(server)[0]
    assert newest["who"].endswith(" (--watch-flows)")
    assert newest["message"] == f"changed {LOYALTY}"


def versions(server: Served) -> list[dict[str, Any]]:
    """The flows versions, newest first, with who and message."""
    return httpx.get(server.url + "/admin/api/flows/versions", timeout=10, headers={
        "Authorization": f"Bearer {(server.cwd / 'var' / 'local_admin_token').read_text()}"}
    ).json()["versions"]


def test_a_draft_that_differs_at_start_is_published_at_start(
    newcomer_serve: Callable[..., Served]
) -> None:
    """Edited while no server ran: with --watch-flows the files are meant to be live."""
    first = newcomer_serve()
    assert flow_version(first) == 1
    first.stop()
    route_gold_to(first.cwd / "flows", "platinum")
    server = newcomer_serve("--watch-flows")
    deadline = time.monotonic() + 30
    while flow_version(server) != 2:
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    assert ("ivr: --watch-flows: published version 2 (at start: changed loyalty_routing.yaml)"
            in server.log.read_text().splitlines())
    assert PLATINUM_SIP in server.call(L.GOLD).stdout


def test_a_flow_file_added_then_deleted_is_said_added_then_removed(
    newcomer_serve: Callable[..., Served]
) -> None:
    server = newcomer_serve("--watch-flows")
    extra = server.cwd / "flows" / "extra.yaml"
    saved_until(server, lambda: extra.write_text(EXTRA_FLOW), lambda: flow_version(server) == 2)
    saved_until(server, lambda: extra.unlink(missing_ok=True), lambda: flow_version(server) == 3)
    assert [(v["version"], v["message"]) for v in versions(server)[:2]] == [
        (3, "removed extra.yaml"), (2, "added extra.yaml")]
    log = server.log.read_text().splitlines()
    assert "ivr: --watch-flows: published version 2 (added extra.yaml)" in log
    assert "ivr: --watch-flows: published version 3 (removed extra.yaml)" in log


EXTRA_FLOW = """\
trigger: {channels: [voice], numbers: ["+15005550177"]}
fallback_queue: standard
steps:
  to_gold: {kind: route, queue: gold}
"""

