"""Published flow versions: checking a version before it goes live, publishing and rolling back,
the flows a process serves (the live version, followed as every instance follows the queues), the
older versions sessions are pinned to, and the flows a process starts with.

A version is checked where it is published, against the live queues; every process then loads it
as it is announced. A process that cannot load it (a secret the version needs is not set on this
instance) keeps serving the version it has, says so in its log, and its /readyz and /metrics name
the version it serves."""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import logging
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from ivr.flow_routes import queue_routes
from ivr.flows.loader import (
    FlowLoadError,
    FlowProblem,
    FlowSet,
    load_flow_texts,
    read_flow_texts,
    unlocated,
)
from ivr.metrics import (
    FALLBACK_MISSING_VERSION,
    FALLBACK_REDIS,
    FLOW_VERSION,
    FallbackReason,
    count_failures_from_zero,
)
from ivr.redis.flow_store import (
    CHANGED_CHANNEL,
    LIVE_KEY,
    NO_VERSION,
    FlowStore,
    Published,
    QueuesChanged,
    StaleLive,
    content_hash,
)
from ivr.redis.queue_store import QueueStore

log = logging.getLogger("ivr.flows")

# Older versions a process keeps loaded for the sessions pinned to them. A session lives minutes
# (a flow's expire_after); a version older than the last few is loaded again if one still asks.
OLDER_VERSIONS_KEPT = 8
# How long a webhook may wait for an older version's files (a rare case: a session pinned to a
# version this process never loaded). Past it, the session goes to its flow's fallback queue.
PINNED_LOAD_TIMEOUT = 1.0
# A publish checked against the queues is written only if they did not change meanwhile.
PUBLISH_ATTEMPTS = 5


@dataclass(frozen=True)
class FlowChecks:
    """What this process knows to check flows against, besides the queues: the names of the
    secrets set on it, and of the settings a flow can read (None: not checked)."""

    secrets: Collection[str]
    settings: Collection[str] | None = None

    def load(self, files: dict[str, str], queue_names: Collection[str] | None,
             version: int = 0, directory: Path | None = None) -> FlowSet:
        """Load `files` (read from `directory`, if they were); raises FlowLoadError naming
        every problem."""
        started = time.perf_counter()
        flows = load_flow_texts(files, queue_names, self.secrets, self.settings,
                                version=version, directory=directory)
        log.debug("flows loaded: %d flows%s in %.2f s", len(flows.flows),
                  f" of version {version}" if version else "", time.perf_counter() - started)
        return flows


class PinnedVersionMissing(Exception):
    """A session's flow version cannot be found or loaded: it goes to its flow's fallback queue.
    `reason`: missing_version, or redis when the store could not be asked."""

    def __init__(self, version: int, reason: FallbackReason, detail: str) -> None:
        super().__init__(f"flows version {version}: {detail}")
        self.version = version
        self.reason = reason
        self.flow: str | None = None  # the session's flow, set where the session is known


class LiveFlows:
    """The flows this process serves: `current`, the live version, switched to within a moment
    of a publish (the queue store's listener hands it the announcements, and re-reads the live
    version after a reconnection or a lost message); and older versions, for the sessions that
    started on them. Reading `current` costs a call nothing."""

    channel = CHANGED_CHANNEL
    version_key = LIVE_KEY

    def __init__(self, store: FlowStore, checks: FlowChecks, current: FlowSet) -> None:
        self.current = current
        self._store = store
        self._checks = checks
        self._older: OrderedDict[int, FlowSet] = OrderedDict()
        self._unloadable: set[int] = set()  # told once each; not tried again until announced
        self._switching = asyncio.Lock()
        self._loading: dict[int, asyncio.Task[FlowSet]] = {}
        FLOW_VERSION.set(current.version)
        count_failures_from_zero(current.flows.values())

    @property
    def version(self) -> str | None:
        return str(self.current.version) if self.current.version else None

    async def resync(self) -> None:
        async with self._switching:
            live = await self._store.live_version()
            # A version this process could not load is not tried again every recheck: its
            # announcement (another publish) or a restart tries anew.
            if live and live != self.current.version and live not in self._unloadable:
                await self._switch(live)

    async def changed(self, data: str) -> None:
        if data.isdigit():
            self._unloadable.discard(int(data))
            await self.caught_up(int(data))

    async def caught_up(self, version: int, flows: FlowSet | None = None) -> None:
        """Serve `version` if it is newer than the version served: announced, or published by
        this process (whose next call routes by it, before the announcement comes back; its
        `flows` as the publish loaded them, so they are not loaded twice). Versions only grow:
        an older one, announced after a newer one was switched to, is left alone. One switch
        at a time, so a slower load cannot land over a newer one."""
        async with self._switching:
            if version > self.current.version:
                await self._switch(version, flows)

    async def _switch(self, version: int, flows: FlowSet | None = None) -> None:
        try:
            if flows is None:
                flows = await self._loaded(version)
        except PinnedVersionMissing as exc:
            if version not in self._unloadable:
                self._unloadable.add(version)
                log.error("flows version %d is live but this process cannot serve it; it "
                          "keeps serving version %d: %s", version, self.current.version, exc)
            return
        previous, self.current = self.current, flows
        self._keep(previous)
        FLOW_VERSION.set(version)
        count_failures_from_zero(flows.flows.values())
        log.info("flows version %d live (was %d): %d flows", version, previous.version,
                 len(flows.flows))

    async def pinned(self, version: int) -> FlowSet:
        """The flows of version `version`, for a session that started on it: at no cost if it
        is live or was lately; else read from the store. Raises PinnedVersionMissing."""
        if version == self.current.version:
            return self.current
        flows = self._older.get(version)
        if flows is not None:
            self._older.move_to_end(version)
            return flows
        try:
            async with asyncio.timeout(PINNED_LOAD_TIMEOUT):
                # Shielded: a webhook that stops waiting leaves the load to the others.
                return await asyncio.shield(self._loaded(version))
        except (RedisError, OSError, TimeoutError) as exc:
            raise PinnedVersionMissing(version, FALLBACK_REDIS,
                                       f"store unavailable ({exc!r})") from None

    def _loaded(self, version: int) -> asyncio.Task[FlowSet]:
        """Version `version` loading, once however many ask for it at the same time (the
        webhooks pinned to it on a process that just started, say), and kept once loaded."""
        task = self._loading.get(version)
        if task is None:
            task = asyncio.ensure_future(self._load(version))
            self._loading[version] = task
            task.add_done_callback(self._loaded_done)
        return task

    def _loaded_done(self, task: asyncio.Task[FlowSet]) -> None:
        self._loading = {v: t for v, t in self._loading.items() if t is not task}
        if not task.cancelled() and task.exception() is None:
            self._keep(task.result())

    async def _load(self, version: int) -> FlowSet:
        kept = self._older.get(version)
        if kept is not None:
            return kept
        files = await self._store.files(version)
        if files is None:
            raise PinnedVersionMissing(version, FALLBACK_MISSING_VERSION, "not in the store")
        try:
            # Not against the queues: the version was checked against them when published, and
            # a route to a queue deleted since goes to the fallback queue as it would anyway.
            # In a thread: parsing a version takes a tenth of a second or more, which the event
            # loop must not wait out with calls in flight.
            return await asyncio.to_thread(self._checks.load, files, None, version)
        except FlowLoadError as exc:
            raise PinnedVersionMissing(version, FALLBACK_MISSING_VERSION, str(exc)) from None

    def _keep(self, flows: FlowSet) -> None:
        self._older[flows.version] = flows
        self._older.move_to_end(flows.version)
        while len(self._older) > OLDER_VERSIONS_KEPT:
            self._older.popitem(last=False)


class FlowsRefused(Exception):
    """A version's flows do not pass the checks; `problems`: one line each (file: where: what);
    `located`: the same as (file, field, message)."""

    def __init__(self, problems: list[str], located: list[FlowProblem] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.located = located if located is not None else unlocated(problems)


async def publish(flow_store: FlowStore, queue_store: QueueStore, checks: FlowChecks,
                  files: dict[str, str], who: str, message: str, *, action: str = "publish",
                  rolled_back_to: int | None = None, expected_live: str = "") -> Published:
    """Check `files` against the live queues and publish them; the answer carries the flows as
    loaded for the check, for the publishing process to serve at once. Raises FlowsRefused
    (nothing written) or StaleLive."""
    for _ in range(PUBLISH_ATTEMPTS):
        queues, queues_version = await queue_store.live_names()
        try:
            # In a thread, as a version is loaded in a process (LiveFlows._load).
            flows = await asyncio.to_thread(checks.load, files, queues)
        except FlowLoadError as exc:
            raise FlowsRefused(exc.problems, exc.located) from None
        try:
            published = await flow_store.publish(files, who, message, action=action,
                                                 rolled_back_to=rolled_back_to,
                                                 expected_live=expected_live,
                                                 queues_version=queues_version,
                                                 routes=queue_routes(flows))
        except QueuesChanged:
            continue
        flows.version = published.version.version
        return dataclasses.replace(published, flows=flows)
    raise QueuesChanged()


async def rollback(flow_store: FlowStore, queue_store: QueueStore, checks: FlowChecks,
                   version: int, who: str, expected_live: str = "") -> Published:
    """Version `version`'s files as a new version (none when they are what is live). Raises
    LookupError when there is no such version, FlowsRefused when it no longer fits the queues."""
    files = await flow_store.files(version)
    if files is None:
        raise await flow_store.version_missing(version)
    return await publish(flow_store, queue_store, checks, files, who,
                         f"rollback to version {version}", action="rollback",
                         rolled_back_to=version, expected_live=expected_live)


async def starting_flows(flow_store: FlowStore, queue_store: QueueStore, checks: FlowChecks,
                         flows_dir: Path, *, compare_draft: bool = True) -> FlowSet:
    """The flows a process starts with: the live version; in an empty store, the files of
    `flows_dir`, published as version 1 (they must then be valid). A draft that differs from the
    live version is never put into service here: a warning names `ivr flows publish` (unless
    `compare_draft` is False: `ivr serve` says it once, before its workers start). Raises
    FlowLoadError for a broken seed, FlowsRefused when the live version cannot be served here."""
    seeded = await _seeded(flow_store, queue_store, checks, flows_dir)
    if isinstance(seeded, FlowSet):
        return seeded
    files = await _live_files(flow_store, seeded)
    try:
        flows = checks.load(files, None, seeded)
    except FlowLoadError as exc:
        raise FlowsRefused([f"flows version {seeded} (live) cannot be served here: {problem}"
                            for problem in exc.problems]) from None
    if compare_draft:
        await _compare_draft(flow_store, queue_store, checks, flows_dir, seeded, files)
    return flows


async def check_starting_flows(flow_store: FlowStore, queue_store: QueueStore,
                               checks: FlowChecks, flows_dir: Path) -> None:
    """What `ivr serve` checks of the flows before its workers start, loading one flow set at
    most: it seeds an empty store (the files must be valid), or warns of a draft that differs
    from the live version. The live version is not loaded here: each worker loads it as it
    starts, and one that cannot is a start that failed (ivr.cli). Raises as starting_flows."""
    seeded = await _seeded(flow_store, queue_store, checks, flows_dir)
    if not isinstance(seeded, FlowSet):
        files = await _live_files(flow_store, seeded)
        await _compare_draft(flow_store, queue_store, checks, flows_dir, seeded, files)


async def _seeded(flow_store: FlowStore, queue_store: QueueStore, checks: FlowChecks,
                  flows_dir: Path) -> FlowSet | int:
    """The flows of `flows_dir` published as version 1 if no version is live, else the live
    version's number."""
    live = await flow_store.live_version()
    if live:
        return live
    files = read_flow_texts(flows_dir)
    flows = checks.load(files, (await queue_store.live_names())[0], directory=flows_dir)
    try:
        seeded = await flow_store.publish(files, "seed", f"seeded from {flows_dir}",
                                          action="seed", expected_live=NO_VERSION,
                                          routes=queue_routes(flows))
    except StaleLive as exc:  # another instance seeded first: serve what it published
        return exc.live
    log.info("flows: seeded version %d from %s", seeded.version.version, flows_dir)
    flows.version = seeded.version.version
    return flows


async def _live_files(flow_store: FlowStore, live: int) -> dict[str, str]:
    files = await flow_store.files(live)
    if files is None:
        raise FlowsRefused([f"flows version {live} is live but its files are not in the store"])
    return files


async def _compare_draft(flow_store: FlowStore, queue_store: QueueStore, checks: FlowChecks,
                         flows_dir: Path, live: int, live_files: dict[str, str]) -> None:
    """Warn when the flows in `flows_dir` are not the live version: the server serves the live
    version, and a draft goes live only by `ivr flows publish`."""
    try:
        draft = read_flow_texts(flows_dir)
    except FlowLoadError:
        return  # no draft here (a server deployed without its flows directory): nothing to say
    if content_hash(draft) == content_hash(live_files):
        return
    meta = await flow_store.version(live)
    published = f" (published by {meta.who} at {meta.at})" if meta else ""
    try:
        checks.load(draft, (await queue_store.live_names())[0], directory=flows_dir)
    except FlowLoadError as exc:
        log.warning("the flows in %s differ from the live version %d%s and are broken; serving "
                    "version %d. Fix them, then put them into service with `ivr flows publish`:"
                    "\n%s", flows_dir, live, published, live, "\n".join(exc.problems))
        return
    log.warning("the flows in %s differ from the live version %d%s; serving version %d. Put "
                "them into service with `ivr flows publish`, or see what differs with `ivr "
                "flows diff`", flows_dir, live, published, live)


def flow_summaries(flows: FlowSet) -> list[dict[str, Any]]:
    """Each flow of a version as admins see it: its file's flow name, the channels and numbers
    it serves, whether it is a channel's default, and the queues it may route to."""
    return [{"name": flow.name, "channels": list(flow.trigger.channels),
             "numbers": list(flow.trigger.numbers), "default": flow.trigger.default,
             "fallback_queue": flow.fallback_queue, "queues": sorted(flow.routed_queues())}
            for flow in sorted(flows.flows.values(), key=lambda flow: flow.name)]


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[tuple[str, str]]:
    """(file name, added, removed or changed) for each file that differs from `old` to `new`."""
    return [(name, "added" if name not in old else "removed" if name not in new else "changed")
            for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]


def unified_diffs(old: dict[str, str], new: dict[str, str], old_label: str,
                  new_label: str) -> str:
    """A unified diff per file from `old` to `new` (file name -> text), files added and removed
    included; "" when they are the same. Labels say where each side is from (`live v7`)."""
    parts = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        parts.append("".join(difflib.unified_diff(
            _lines(before), _lines(after),
            f"{old_label}/{name}" if before is not None else "/dev/null",
            f"{new_label}/{name}" if after is not None else "/dev/null")))
    return "".join(parts)


def _lines(text: str | None) -> list[str]:
    if text is None:
        return []
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines
