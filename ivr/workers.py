"""The worker processes of `ivr serve`: uvicorn's supervisor, whatever the number of workers, so
that SIGHUP replaces them without refusing a connection; their metrics directory; and an HTTP
protocol whose worker, told to stop, loses no request that is already on its way to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from socket import socket

import uvicorn
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from ivr.logs import uvicorn_log_config
from ivr.metrics import MULTIPROCESS_ENV
from ivr.settings import Settings

# How long a new worker may take to start (after SIGHUP: else the old one keeps serving), and how
# long a hung worker may leave a health check unanswered before it is replaced.
WORKER_START_TIMEOUT = 30
# How long a stopping worker waits for the requests it is answering: no webhook is of any use
# after Twilio's 15 s.
DRAIN_TIMEOUT = 15


def serve_workers(host: str, port: int, workers: int, settings: Settings) -> bool:
    """Serve until SIGTERM or Ctrl-C. This process holds the listening socket and starts the
    workers; SIGHUP replaces them one by one, each new worker (its modules imported afresh, the
    settings and .env read again) serving before the one it replaces stops taking connections
    and drains; SIGTERM drains them all before this returns. False when the workers could
    not start (their lifespan refused the configuration): uvicorn then stops them all."""
    config = uvicorn.Config(
        "ivr.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=DrainingHttpProtocol,
        # A worker is ready once its lifespan has started (Redis connected, flows loaded, the
        # queues followed) and it listens: uvicorn stops the worker it replaces only then.
        lifespan="on",
        timeout_worker_healthcheck=WORKER_START_TIMEOUT,
        timeout_graceful_shutdown=DRAIN_TIMEOUT,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        access_log=False,
        server_header=False,
    )
    # Each worker writes its metrics to files here and /metrics sums them all, with one worker
    # too: during a reload the old worker and its replacement serve side by side, and counts go
    # on across it (what the files cost a call: bench/README.md, ivr/metrics.py). Workers are new
    # processes that import prometheus_client with this environment; a fresh directory per run,
    # so no count from an earlier run is ever added in.
    listening = config.bind_socket()
    metrics_dir = Path(tempfile.mkdtemp(prefix="ivr-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
    try:
        supervisor = Workers(config, [listening], metrics_dir)
        supervisor.run()
        return not any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    finally:
        listening.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Workers(Multiprocess):
    """uvicorn's supervisor, which also drops the gauges of a worker it no longer runs: one that
    stops by itself drops its own (ivr.app's lifespan), not one killed or crashed."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket], metrics_dir: Path) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir

    def handle_signals(self) -> None:  # SIGHUP, SIGTTOU: workers replaced, one fewer
        self._forgetting_stopped(super().handle_signals)

    def keep_subprocess_alive(self) -> None:  # a worker dead or hung: replaced
        self._forgetting_stopped(super().keep_subprocess_alive)

    def _forgetting_stopped(self, supervise: Callable[[], None]) -> None:
        running = {process.pid for process in self.processes}
        supervise()
        for pid in running - {process.pid for process in self.processes}:
            if pid is not None:
                multiprocess.mark_process_dead(pid, str(self.metrics_dir))


class DrainingHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol (httptools), except that a stopping worker does not close a
    connection between requests at once, which resets a request the client has already sent on
    it (on a connection accepted as the worker stopped, or the next one on a connection kept
    alive): it leaves it open until keep-alive would have closed it, and answers a request that
    comes meanwhile with `Connection: close`."""

    _draining = False

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()  # closes after the answer in progress
            return
        self._draining = True
        if self.timeout_keep_alive_task is None:  # accepted, no request yet: none is armed
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False
