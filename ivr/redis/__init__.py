"""Everything that talks to Redis: the client, the hot path's auto-pipeline, the queue store,
conversations, fetch cache purges, the embedded server."""
