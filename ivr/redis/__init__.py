"""Everything that talks to Redis: the client (one Redis, or the master a Sentinel group names),
the hot path's auto-pipeline, the queue store, sessions, conversations (contact memory, the
messaging lock, retries, held decisions), call traces, the fetch cache's shared answers (the
engine's SharedAnswers protocol) and its purges, the embedded server. The engine (ivr.flows)
imports none of it."""
