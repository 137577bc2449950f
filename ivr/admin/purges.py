"""Cache purges as an admin names them: a cached fetch step of a loaded flow and, optionally, one
caller, whose cache keys are the step's own, rendered for that contact as a call renders them.
The API (`POST /admin/api/cache/purge`) and `ivr cache purge` go through here; ivr.redis.fetch_cache_purges
does the purge in Redis and in every process."""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivr.admin.changes import field_errors
from ivr.flows.model import Flow
from ivr.flows.step import Channel, Contact, PurgeableCache, Run
from ivr.logs import mask_number
from ivr.timestamps import utc_iso
from ivr.validation import E164_PATTERN, unknown, with_article

if TYPE_CHECKING:
    from ivr.services import Services

WHATSAPP = "whatsapp:"
E164 = re.compile(E164_PATTERN)
# What an admin may paste around a number's digits; Twilio sends none of it.
_FORMATTING = str.maketrans("", "", " -().")
# What a purge knows of a caller's call: the contact (with its memory), the settings, the secrets.
CALLER_VARIABLES = frozenset({"contact", "settings", "secrets"})
MAX_SHOWN = 40  # characters of a bad name or number echoed in an error


class UnknownTarget(Exception):
    """No such flow, or no such step in it: the message says which, with the closest name."""


@dataclass(frozen=True)
class PurgeTarget:
    flow: Flow
    step_id: str
    step: PurgeableCache


def purge_target(flows: dict[str, Flow], flow_name: str, step_id: str) -> PurgeTarget:
    """The cached fetch step `step_id` of flow `flow_name`. UnknownTarget for a flow or step
    that does not exist; InvalidInput for a step that caches nothing."""
    flow = flows.get(flow_name)
    if flow is None:
        raise UnknownTarget(unknown("a flow", _cut(flow_name), flows, "flows"))
    step = flow.steps.get(step_id)
    if step is None:
        raise UnknownTarget(unknown(f"a step of flow {flow_name!r}", _cut(step_id), flow.steps,
                                    "steps"))
    cache = step.purgeable_cache()
    if cache is None:
        cached = [name for name, s in flow.steps.items() if s.purgeable_cache() is not None]
        what = (f"{with_article(step.kind)} step"  # type: ignore[attr-defined]
                + (" without `cache`" if step.may_cache else ""))
        where = (f"its cached fetch steps: {', '.join(cached)}" if cached
                 else "the flow caches no fetch")
        raise field_errors(f"step {step_id!r} of flow {flow_name!r} is {what}, not a cached "
                           f"fetch: nothing to purge ({where})", "step")
    return PurgeTarget(flow, step_id, cache)


def caller_number(text: str) -> str:
    """The contact's number, as a flow sees the caller: the `whatsapp:` prefix stripped (and
    any spaces, dashes, dots or brackets an admin pasted with it)."""
    number = text.strip().removeprefix(WHATSAPP).translate(_FORMATTING)
    if not E164.fullmatch(number):
        raise field_errors(f"{_shown(text)} is not a phone number: give it in E.164, e.g. "
                           "+15551234567 (or whatsapp:+15551234567)", "caller")
    return number


async def purge(services: Services, target: PurgeTarget, caller: str | None,
                who: str) -> dict[str, Any]:
    """Purge the step's cached answers, the caller's or all; what was purged, for the API."""
    step = target.step
    entry: dict[str, Any] = {"at": utc_iso(time.time(), milliseconds=True), "who": who,
                             "action": "purge", "flow": target.flow.name,
                             "step": target.step_id, "caller": None}
    result: dict[str, Any] = {"flow": target.flow.name, "step": target.step_id,
                              "caller": None, "removed": None, "generation": None}
    purges = services.cache_purges
    if caller is None:
        result["generation"] = await purges.purge_step(step.cache_scope, entry)
        return result
    number = caller_number(caller)
    unknowable = step.request_variables() - CALLER_VARIABLES
    if unknowable:
        raise field_errors(
            f"step {target.step_id!r} makes its request from {', '.join(sorted(unknowable))} "
            "too, which a purge cannot know for one caller: purge the whole step (without "
            "a caller)", "caller")
    await purges.sync_generation(step.cache_scope)
    keys = await caller_keys(services, target, number)
    entry["caller"] = mask_number(number)
    result["caller"] = number
    result["removed"] = await purges.purge_keys(step.cache_scope, keys, entry)
    return result


async def caller_keys(services: Services, target: PurgeTarget, number: str) -> list[str]:
    """The caller's keys in the step's cache: its request rendered, by the step itself, for
    the contact on each channel the flow serves (a call, an SMS, a WhatsApp message)."""
    memory = await services.conversations.contact_memory(number)
    keys = set()
    surroundings = services.surroundings
    assert surroundings.upstreams is not None  # the server's turns always have them
    for contact in _contacts(number, target.flow.trigger.channels, memory):
        run = Run(contact=contact, params={}, settings=surroundings.settings,
                  secrets=surroundings.secrets, http=surroundings.http, deadline=0.0)
        key = target.step.cache_key(surroundings.upstreams, run.variables)
        if key is not None:
            keys.add(key)
    return sorted(keys)


def _contacts(number: str, channels: Collection[Channel], memory: dict[str, str]
              ) -> Iterator[Contact]:
    if "voice" in channels:
        yield Contact(number, number, "voice", memory)
    if "messaging" in channels:
        yield Contact(number, number, "messaging", memory)
        yield Contact(number, WHATSAPP + number, "messaging", memory)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _shown(text: str) -> str:
    return repr(_cut(text))
