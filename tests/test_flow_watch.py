"""`ivr serve --watch-flows`: a saved flow file is published at once, by the `ivr serve`
parent alone; broken flows are told and the live version stays."""

from __future__ import annotations

import time
from collections.abc import Callable

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
    assert ("ivr: --watch-flows: published version 2 (loyalty_routing.yaml changed)"
            in log.splitlines())
    assert "ivr: --watch-flows: not published (1 problem); the live version stays:" in log
    assert log.count("published version 2 ") == 1  # by the parent, not by each worker
    assert flow_version(server) == 2

    broken.unlink()
    versions = httpx.get(server.url + "/admin/api/flows/versions", timeout=10, headers={
        "Authorization": f"Bearer {(server.cwd / 'var' / 'local_admin_token').read_text()}"})
    newest = versions.json()["versions"][0]
    assert newest["who"].endswith(" (--watch-flows)")
    assert newest["message"] == f"{LOYALTY} changed"

