"""Everything that talks to Redis: the client, the hot path's auto-pipeline, the queue store,
conversations, call traces, the fetch cache's shared answers (the engine's SharedAnswers
protocol) and its purges, the embedded server. The engine (ivr.flows) imports none of it."""
