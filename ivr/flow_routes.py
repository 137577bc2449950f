"""Which queues the live flows version routes to, as Redis has it: what a queue's delete is
checked against, whichever version this process serves (it may not have switched yet, or may be
unable to serve the live version), and what the admin page says uses a queue.

A version keeps its routes (queue -> flows) in its metadata from its publish on; a version
published before that has none, and its files are loaded to know them."""

from __future__ import annotations

from collections.abc import Collection

from ivr.flows.loader import FlowLoadError, FlowSet, load_flow_texts
from ivr.redis.flow_store import LIVE_KEY, FlowStore
from ivr.redis.queue_store import QueueInUse


def queue_routes(flows: FlowSet) -> dict[str, list[str]]:
    """Queue name -> the names of the flows of `flows` that may route to it."""
    routes: dict[str, list[str]] = {}
    for flow in flows.flows.values():
        for queue in flow.routed_queues():
            routes.setdefault(queue, []).append(flow.name)
    return {queue: sorted(names) for queue, names in sorted(routes.items())}


def flows_in_words(names: Collection[str]) -> str:
    """`flow a`, or `flows a, b`: how admins are told which flows use a queue."""
    return ("flows " if len(names) > 1 else "flow ") + ", ".join(sorted(names))


class RoutesUnknown(Exception):
    """The live version's routes cannot be known (its files are gone, or no longer load)."""


class LiveRoutes:
    """The live flows version's routes, read from the flow store at each ask (a queue's
    delete is rare; a publish may land at any moment). Implements QueueUsers for
    QueueStore.delete, guarded on the live version's key."""

    key = LIVE_KEY

    def __init__(self, store: FlowStore) -> None:
        self._store = store

    async def routes(self) -> tuple[int, dict[str, tuple[str, ...]]]:
        """The live version's number (0: none yet) and queue name -> the flows routing to it.
        Raises RoutesUnknown."""
        live = await self._store.live_version()
        if live == 0:
            return 0, {}
        meta = await self._store.version(live)
        if meta is not None and meta.routes is not None:
            return live, meta.routes
        files = await self._store.files(live)
        if files is None:
            raise RoutesUnknown(f"flows version {live} is live but its files are not in the store")
        try:
            # Loaded for its routes alone: not checked against this instance's secrets or
            # settings, which may differ from where it was published.
            flows = load_flow_texts(files, version=live)
        except FlowLoadError as exc:
            raise RoutesUnknown(f"flows version {live} (live) does not load here: "
                                f"{'; '.join(exc.problems)}") from None
        return live, {queue: tuple(names) for queue, names in queue_routes(flows).items()}

    async def users(self) -> tuple[str, dict[str, str]]:
        """QueueUsers.users: the live version, and each queue it routes to with its flows."""
        try:
            live, routes = await self.routes()
        except RoutesUnknown as exc:
            # Not knowing what routes to a queue must not let it go: nothing is deleted.
            raise QueueInUse(f"{exc}, so which queues it routes to is not known; publish the "
                             f"flows again (ivr flows publish), then delete") from None
        return str(live), {queue: f"flows version {live} ({flows_in_words(names)})"
                           for queue, names in routes.items()}
