"""A queue's delete is checked against the live flows version as Redis has it, not the flows one
process happens to serve: a version published by another instance (one this process cannot
serve, or has not switched to yet) protects its queues, and a publish landing between the check
and the delete makes the delete check again. Real Redis, real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from ivr.flow_routes import LiveRoutes
from ivr.flow_versions import FlowChecks, publish
from ivr.queues import Queue
from ivr.redis.client import connect
from ivr.redis.flow_store import FlowStore
from ivr.redis.queue_store import QueueInUse, QueueStore
from ivr.settings import Settings
from tests.test_flow_versions import CRM_FLOW as FLOW_NEEDING_A_SECRET
from tests.test_queue_store import SHIPPED

T = TypeVar("T")
ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}", "X-IVR-Actor": "alice"}
ELITE = Queue(sip_uri="sip:elite@queues.example.com")
# A flow routing to elite that needs a secret the test servers do not have: an instance where it
# is set publishes it, and the servers here cannot serve it.
CRM_FLOW = FLOW_NEEDING_A_SECRET.replace("queue: gold", "queue: elite")
WITH_CRM_SECRET = FlowChecks(secrets=("crm_token",),
                             settings=Settings(_env_file=None).flow_settings())
ELITE_ONLY_FLOW = CRM_FLOW.replace('url: "https://crm.invalid/{{ secrets.crm_token }}"',
                                   'url: "https://crm.invalid/"')


def on_stores(redis_url: str, operation: Callable[[FlowStore, QueueStore], Awaitable[T]]) -> T:
    """`operation` on the flow and queue stores of `redis_url`, as another instance would."""
    async def go() -> T:
        queues = QueueStore(connect(redis_url))
        try:
            await queues.seed_queues(SHIPPED)
            await queues.refresh()
            return await operation(FlowStore(queues.redis), queues)
        finally:
            await queues.close()
    return asyncio.run(go())


def shipped_flows(config_dir: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((config_dir / "flows").glob("*.yaml"))}


def loyalty_flow(config_dir: Path) -> dict[str, str]:
    """The shipped flow that routes to the queues of SHIPPED alone."""
    return {"loyalty_routing.yaml": (config_dir / "flows" / "loyalty_routing.yaml").read_text()}


def test_a_queue_the_live_version_of_another_instance_routes_to_is_not_deleted(
    make_settings, start_server, config_dir: Path, redis_url: str
) -> None:
    server = start_server(make_settings(admin_token=ADMIN))
    with httpx.Client(base_url=server.url + "/admin/api", headers=AUTH, timeout=30) as admin:
        assert admin.put("/queues/elite", json={"sip_uri": ELITE.sip_uri}).status_code == 201
        files = {**shipped_flows(config_dir), "crm.yaml": CRM_FLOW}
        published = on_stores(redis_url, lambda flows, queues: publish(
            flows, queues, WITH_CRM_SECRET, files, "bob", "crm lookups"))
        assert published.version.version == 2
        refused = admin.delete("/queues/elite")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == ("queue 'elite' is routed to by flows version 2 "
                                           "(flow crm)")
        assert admin.get("/queues/elite").status_code == 200
        # This server could not switch to version 2: it still serves the seed, which does not
        # route to elite, and that is not what decided.
        assert httpx.get(server.url + "/readyz", timeout=10).json()["flow_version"] == 1


def test_a_queue_only_an_older_version_routed_to_is_deleted_once_the_live_one_does_not(
    make_settings, start_server, config_dir: Path, redis_url: str
) -> None:
    server = start_server(make_settings(admin_token=ADMIN))
    with httpx.Client(base_url=server.url + "/admin/api", headers=AUTH, timeout=30) as admin:
        seed = on_stores(redis_url, lambda flows, queues: flows.version(1))
        assert seed is not None and seed.routes is not None  # the seed keeps its routes too
        assert seed.routes["gold"] == ("loyalty_routing",)
        assert admin.put("/queues/elite", json={"sip_uri": ELITE.sip_uri}).status_code == 201
        files = shipped_flows(config_dir)
        assert admin.post("/flows/versions", json={
            "files": {**files, "elite.yaml": ELITE_ONLY_FLOW}}).status_code == 201
        assert admin.delete("/queues/elite").status_code == 409
        assert admin.post("/flows/versions", json={"files": files}).status_code == 201
        assert admin.delete("/queues/elite").status_code == 204


class PublishingAfterFirstRead(LiveRoutes):
    """The live routes, with a publish routing to elite landing right after the first read, as
    another instance's would between a delete's check and its write."""

    def __init__(self, flows: FlowStore, queues: QueueStore, files: dict[str, str]) -> None:
        super().__init__(flows)
        self.queues = queues
        self.files = files
        self.reads = 0

    async def users(self) -> tuple[str, dict[str, str]]:
        read = await super().users()
        self.reads += 1
        if self.reads == 1:
            await publish(self._store, self.queues, WITH_CRM_SECRET, self.files, "bob", "elite")
        return read


def test_a_publish_between_the_check_and_the_delete_makes_the_delete_check_again(
    redis_url: str, config_dir: Path
) -> None:
    async def race(flows: FlowStore, queues: QueueStore) -> None:
        await queues.put("elite", ELITE, "alice")
        routes = PublishingAfterFirstRead(
            flows, queues, {**loyalty_flow(config_dir), "elite.yaml": ELITE_ONLY_FLOW})
        with pytest.raises(QueueInUse, match=r"^queue 'elite' is routed to by flows version 1 "
                                             r"\(flow elite\)$"):
            await queues.delete("elite", "alice", routes)
        assert routes.reads == 2  # no flows when first checked; checked again after the publish
        assert await queues.record("elite") is not None

    on_stores(redis_url, race)


def test_a_version_stored_without_its_routes_protects_the_queues_its_files_route_to(
    redis_url: str, config_dir: Path
) -> None:
    async def body(flows: FlowStore, queues: QueueStore) -> None:
        await flows.publish(loyalty_flow(config_dir), "seed", "before routes were kept")
        assert (await flows.version(1)).routes is None  # type: ignore[union-attr]
        with pytest.raises(QueueInUse, match=r"routed to by flows version 1 \(flow "
                                             r"loyalty_routing\)"):
            await queues.delete("gold", "alice", LiveRoutes(flows))
        await flows.publish({"broken.yaml": "steps: [not, a, flow]"}, "seed", "broken")
        with pytest.raises(QueueInUse, match="flows version 2 .live. does not load here: .*"
                                             "publish the flows again"):
            await queues.delete("gold", "alice", LiveRoutes(flows))
        assert await queues.record("gold") is not None

    on_stores(redis_url, body)


def test_a_publish_keeps_which_queues_its_flows_route_to(
    redis_url: str, config_dir: Path
) -> None:
    async def body(flows: FlowStore, queues: QueueStore) -> None:
        await queues.put("elite", ELITE, "alice")
        published = await publish(flows, queues, WITH_CRM_SECRET,
                                  {**loyalty_flow(config_dir), "crm.yaml": CRM_FLOW},
                                  "bob", "crm")
        stored = await flows.version(published.version.version)
        assert stored is not None and stored.routes == published.version.routes
        assert stored.routes["elite"] == ("crm",)
        assert stored.routes["gold"] == ("loyalty_routing",)

    on_stores(redis_url, body)
