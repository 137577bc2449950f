"""`ivr serve --watch-flows`, for a developer's loop: the flow files of IVR_FLOWS_DIR are
published at start when they differ from the live version, and at every change, as `ivr flows
publish` would, checked against the live queues (broken flows are told and the live version
stays). Development only: in production a flow goes
live by a deliberate publish, seen and audited, never by a file saved on one machine.

It runs in the `ivr serve` parent, once, whatever the number of workers: they follow the
publish as every instance does."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import watchfiles
from redis.exceptions import RedisError

from ivr.admin.client import current_user
from ivr.app import flow_checks
from ivr.flow_versions import FlowsRefused, changed_files, publish
from ivr.flows.loader import FlowLoadError, read_flow_texts
from ivr.redis.client import connect
from ivr.redis.flow_store import FlowStore, QueuesChanged
from ivr.redis.queue_store import QueueStore
from ivr.settings import Settings

log = logging.getLogger("ivr.cli")

FLOW_SUFFIXES = (".yaml", ".yml")
PREFIX = "ivr: --watch-flows:"


def watch_flows(settings: Settings) -> threading.Event:
    """Publish the flows of `settings.flows_dir` now if they differ from the live version, and
    whenever one changes, from a thread of its own; set the event returned to stop."""
    stop = threading.Event()
    threading.Thread(target=_watch, args=(settings, stop), name="ivr-flow-watch",
                     daemon=True).start()
    print(f"{PREFIX} publishing the flows of {settings.flows_dir} now if they differ from the "
          "live version, and whenever one changes (development only)", file=sys.stderr)
    return stop


def _watch(settings: Settings, stop: threading.Event) -> None:
    who = f"{current_user()} (--watch-flows)"
    # The developer asked for the files to be live: a draft edited while no server ran, too.
    _publish_and_tell(settings, who, "at start: ")
    for _ in watchfiles.watch(settings.flows_dir, watch_filter=_flow_files_of(settings),
                              stop_event=stop):
        _publish_and_tell(settings, who)


def _publish_and_tell(settings: Settings, who: str, when: str = "") -> None:
    try:
        said = asyncio.run(publish_draft(settings, who, when))
    except Exception:  # keep watching: the next save may work
        log.exception("--watch-flows could not publish")
        return
    print(said, file=sys.stderr, flush=True)


def _flow_files_of(settings: Settings) -> Callable[[watchfiles.Change, str], bool]:
    """A filter for flow files, and only those of the directory itself, as a publish reads
    them."""
    directory = settings.flows_dir.resolve()

    def is_flow_file(change: watchfiles.Change, path: str) -> bool:
        return path.endswith(FLOW_SUFFIXES) and Path(path).parent.resolve() == directory

    return is_flow_file


async def publish_draft(settings: Settings, who: str, when: str = "") -> str:
    """Publish the flows of `settings.flows_dir`, with `when` and the files added, changed and
    removed from the live version as its message; what happened, for the developer to read."""
    try:
        files = read_flow_texts(settings.flows_dir)
    except FlowLoadError as exc:
        return _not_published(exc.problems)
    assert settings.redis_url is not None  # `ivr serve` has set it before starting the watch
    store = QueueStore(connect(settings.redis_url), settings.retention())
    try:
        flow_store = FlowStore(store.redis, store.retention)
        # From the contents, not the file events: an editor's save may be a delete and a create.
        live = await flow_store.files(await flow_store.live_version()) or {}
        message = when + _what_changed(live, files)
        published = await publish(flow_store, store, flow_checks(settings), files, who, message)
    except FlowsRefused as exc:
        return _not_published(exc.problems)
    except (RedisError, OSError, QueuesChanged) as exc:
        return _not_published([f"the store cannot be used now ({exc or type(exc).__name__})"])
    finally:
        await store.close()
    version = published.version.version
    if not published.created:
        return f"{PREFIX} unchanged: the live version {version} has these flows already"
    return f"{PREFIX} published version {version} ({message})"


def _what_changed(live: dict[str, str], draft: dict[str, str]) -> str:
    """`added a.yaml; changed b.yaml, c.yaml; removed d.yaml`, from `live` to `draft`."""
    by_change: dict[str, list[str]] = {}
    for name, change in changed_files(live, draft):
        by_change.setdefault(change, []).append(name)
    return "; ".join(f"{change} {', '.join(by_change[change])}"
                     for change in ("added", "changed", "removed") if change in by_change)


def _not_published(problems: list[str]) -> str:
    count = len(problems)
    return "\n".join([f"{PREFIX} not published ({count} problem{'s' if count != 1 else ''}); "
                      "the live version stays:", *(f"  {problem}" for problem in problems)])
