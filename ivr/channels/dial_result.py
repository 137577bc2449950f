"""`<Dial action>`: where Twilio comes back after dialling a queue, with DialCallStatus and, for
SIP, DialSipResponseCode. A caller not connected is failed over to the queue's next SIP URI,
then to its overflow queues' (the flow's `unanswered` step comes after them)."""

from __future__ import annotations

from dataclasses import dataclass

from ivr.channels.answer import Answer
from ivr.channels.inbound import Webhook
from ivr.channels.voice import CallbackUrls, render_dial
from ivr.redis.queue_store import QueueStore

# DialCallStatus values after which the caller has been connected: nothing more to do.
CONNECTED = {"completed", "answered"}


@dataclass(frozen=True)
class DialResult:
    """What a `<Dial action>` webhook says of the dial it ends, and where it was (its query)."""

    status: str
    sip_code: str
    queue: str  # the queue whose targets were being dialled
    attempt: int  # the index of the target dialled, in dial_targets
    last_resort: bool  # the dial was the flow's `unanswered` route: nothing comes after it

    @classmethod
    def of(cls, hook: Webhook) -> DialResult:
        attempt = hook.query.get("try", "")
        return cls(hook.params.get("DialCallStatus", ""),
                   hook.params.get("DialSipResponseCode", "-"), hook.query.get("queue", ""),
                   int(attempt) if attempt.isdigit() else 0, hook.query.get("last") == "1")

    @property
    def connected(self) -> bool:
        return self.status in CONNECTED

    @property
    def summary(self) -> str:
        return (f"dial {self.queue}#{self.attempt}: {self.status or 'no status'} "
                f"(SIP {self.sip_code})")

    def failover(self, store: QueueStore, urls: CallbackUrls) -> Answer | None:
        """The dial of the next target, and a summary for the log; None when none is left."""
        targets = dial_targets(store, self.queue)
        attempt = self.attempt + 1
        if attempt >= len(targets):
            return None
        target_queue, uri = targets[attempt]
        return (render_dial(uri, urls.dial(self.queue, attempt, self.last_resort)),
                f"{self.summary}; failing over to {target_queue}#{attempt}")


def dial_targets(store: QueueStore, queue_name: str) -> list[tuple[str, str]]:
    """(queue, SIP URI) to try in order: the queue's URI, its fallbacks, then its overflow's."""
    targets: list[tuple[str, str]] = []
    seen: set[str] = set()
    name: str | None = queue_name
    while name is not None and name not in seen:  # overflow cycles are refused; still, guard
        seen.add(name)
        queue = store.queue(name)
        if queue is None:
            break
        targets += [(name, uri) for uri in (queue.sip_uri, *queue.fallback_sip_uris)]
        name = queue.overflow
    return targets
