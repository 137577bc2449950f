"""The `ivr` command as a newcomer runs it: `ivr serve` on embedded defaults, `ivr call`."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import yaml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ivr.passwords import verify_password
from ivr.queues import load_queue_file
from ivr.settings import Settings

from tests import loyalty_api as L
from tests.conftest import IVR, ROOT, Served, clean_env, run_ivr
from tests.servers import ServerThread, free_port
from tests.test_sentinel import PASSWORD, RedisProcess


def redis_pid(cwd: Path) -> int:
    with redis.Redis(unix_socket_path=str(cwd / "var" / "redis" / "redis.sock")) as client:
        return int(client.info("server")["process_id"])


def redis_servers_in(cwd: Path) -> list[int]:
    """Live redis-server processes whose data dir is under `cwd`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if (process.info["name"] == "redis-server" and process.info["status"] != "zombie"
                and str(cwd) in " ".join(process.info["cmdline"] or [])):
            found.append(process.pid)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no one reaped yet counts as gone.
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def checkout(tmp_path_factory: pytest.TempPathFactory, loyalty: tuple[L.LoyaltyApi, str],
             extra_flows: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A newcomer's checkout (see `newcomer`) of its own, with `extra_flows` added."""
    cwd = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "flows", cwd / "flows")
    shutil.copytree(ROOT / "sip_config", cwd / "sip_config")
    for name, text in extra_flows.items():
        (cwd / "flows" / name).write_text(text)
    return cwd, clean_env(IVR_LOYALTY_API_URL=loyalty[1])


@pytest.fixture(scope="module")
def shared_serve(tmp_path_factory: pytest.TempPathFactory,
                 loyalty: tuple[L.LoyaltyApi, str]) -> Iterator[Served]:
    """One `ivr serve` on embedded defaults for this module's tests that only send it calls and
    commands: none changes its configuration, its queues or its process. Its checkout has the
    flow of test_keys_are_sent_as_twilio_sends_them_without_the_finish_key too."""
    server = Served(*checkout(tmp_path_factory, loyalty, {"account_check.yaml": ACCOUNT_FLOW}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_admin_server(tmp_path_factory: pytest.TempPathFactory,
                        loyalty: tuple[L.LoyaltyApi, str]) -> Iterator[Served]:
    """`admin_server`'s configuration, shared by the tests that change no queue."""
    cwd, env = checkout(tmp_path_factory, loyalty, {})
    server = Served(cwd, {**env, "IVR_ADMIN_TOKEN": ADMIN})
    server.env["IVR_ADMIN_URL"] = server.url
    yield server
    server.stop()


def test_serve_on_embedded_defaults_answers_signed_test_calls_and_stops_its_redis(
    newcomer_serve: Callable[..., Served],
) -> None:
    server = newcomer_serve()
    cwd = server.cwd
    assert (cwd / "var" / "local_twilio_auth_token").exists()
    pid = redis_pid(cwd)
    voice = server.call(L.GOLD)
    assert voice.returncode == 0, voice.stderr
    assert "<Sip>sip:gold@queues.example.com</Sip>" in voice.stdout
    sms = server.call("--channel", "messaging", L.PLATINUM)
    assert sms.returncode == 0 and "platinum member" in sms.stdout
    whatsapp = server.call("--channel", "messaging", "--whatsapp", L.GOLD)
    assert whatsapp.returncode == 0 and "gold member" in whatsapp.stdout
    unsigned = httpx.post(server.url + "/twilio/voice", data={"From": L.GOLD, "CallSid": "CA1"})
    assert unsigned.status_code == 403
    assert server.stop() == 0
    assert not alive(pid), "the embedded Redis outlived the server"
    assert (cwd / "var" / "redis" / "appendonly.aof").stat().st_size > 0
    assert "LOCAL token" in server.log.read_text()
    assert "+15550000001" not in server.log.read_text()  # numbers are masked


def test_with_several_workers_one_embedded_redis_serves_them_all(
    newcomer_serve: Callable[..., Served],
) -> None:
    server = newcomer_serve("--workers", "2")
    pid = redis_pid(server.cwd)
    family = psutil.Process(server.process.pid).children(recursive=True)
    assert [p.pid for p in family if p.name() == "redis-server"] == [pid]
    assert len([p for p in family if p.name() != "redis-server"]) >= 2  # the workers
    for _ in range(6):
        assert "<Sip>sip:platinum@" in server.call(L.PLATINUM).stdout
    assert server.stop() == 0
    assert not alive(pid)


def test_the_embedded_store_survives_a_restart(newcomer_serve: Callable[..., Served]) -> None:
    first = newcomer_serve()
    with redis.Redis(unix_socket_path=str(first.cwd / "var" / "redis" / "redis.sock"),
                     decode_responses=True) as client:
        record = client.hget("{ivr}:queues", "gold")
        client.hset("{ivr}:queues", "gold", record.replace("sip:gold@queues", "sip:gold@pbx2"))
    first.stop()
    second = newcomer_serve()
    assert "<Sip>sip:gold@pbx2.example.com</Sip>" in second.call(L.GOLD).stdout


def test_a_call_signed_with_the_wrong_token_explains_the_403(shared_serve: Served) -> None:
    server = shared_serve
    result = run_ivr(server.cwd, {**server.env, "TWILIO_AUTH_TOKEN": "not-the-servers-token"},
                     "call", "--server", server.url, L.GOLD)
    assert result.returncode == 1
    assert "signature rejected" in result.stderr


@pytest.mark.parametrize(
    ("path", "old", "new", "workers", "message"),
    [
        ("flows/loyalty_routing.yaml", "on_error: by_tier", "on_error: by_teir", "1",
         "loyalty_routing.yaml: steps.lookup.on_error: 'by_teir' is not a step: did you mean "
         "'by_tier'?"),
        ("flows/loyalty_routing.yaml", "queue: platinum", "queue: platnum", "2",
         "loyalty_routing.yaml: steps.to_platinum.queue: 'platnum' is not a queue: did you "
         "mean 'platinum'?"),
        ("sip_config/queues.yaml", "sip:gold@queues.example.com", "gold queue", "1",
         "queues.yaml: queues.gold.sip_uri: must not contain whitespace"),
    ],
    ids=["broken-flow", "unknown-queue-with-workers", "bad-sip-uri"],
)
def test_serve_refuses_a_broken_configuration_saying_where_and_leaves_nothing_running(
    newcomer, path: str, old: str, new: str, workers: str, message: str
) -> None:
    cwd, env = newcomer
    (cwd / path).write_text((cwd / path).read_text().replace(old, new))
    result = run_ivr(cwd, env, "serve", "--port", str(free_port()), "--workers", workers)
    assert result.returncode == 2
    assert message in result.stderr
    assert redis_servers_in(cwd) == []


def test_a_second_serve_on_the_same_data_dir_is_refused(
    newcomer_serve: Callable[..., Served],
) -> None:
    first = newcomer_serve()
    cwd = first.cwd
    pid = redis_pid(cwd)
    result = run_ivr(cwd, first.env, "serve", "--port", str(free_port()))
    assert result.returncode == 2
    assert "is in use by another `ivr serve`" in result.stderr
    assert redis_pid(cwd) == pid  # the first server's Redis is untouched
    assert "<Sip>sip:gold@" in first.call(L.GOLD).stdout


def test_call_to_a_server_that_is_not_running_says_so(newcomer) -> None:
    cwd, env = newcomer
    server = f"http://127.0.0.1:{free_port()}"
    result = run_ivr(cwd, {**env, "TWILIO_AUTH_TOKEN": "a-token"}, "call", "--server", server,
                     L.GOLD)
    assert result.returncode == 1
    assert "is `ivr serve` running?" in result.stderr
    # Before the first `ivr serve`, there is no local token yet either.
    first = run_ivr(cwd, env, "call", "--server", server, L.GOLD)
    assert first.returncode == 1
    assert "which `ivr serve` makes as it starts. Start `ivr serve` here" in first.stderr


def test_admin_hash_password_hashes_a_piped_password_for_ivr_admin_users(newcomer) -> None:
    cwd, env = newcomer
    result = subprocess.run([*IVR, "admin", "hash-password"], input="correct horse\n", cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    encoded = result.stdout.strip()
    assert encoded.startswith("pbkdf2_sha256$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horse!", encoded)


def _take_terminal() -> None:
    """In the child: a session of its own, whose controlling terminal is its stdin (the pty),
    as at a real terminal: getpass opens /dev/tty, Ctrl-C sends SIGINT. SIGINT is handled as a
    shell at a terminal leaves it: a test run started in the background (`pytest &`) ignores
    it, and the child would inherit that and wait for ever."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("key", "status", "said"), [
    (b"\x04", 1, "ivr: no password given"),  # Ctrl-D
    (b"\x03", 130, ""),  # Ctrl-C
])
def test_admin_hash_password_at_a_terminal_stops_cleanly_on_ctrl_d_or_ctrl_c(
    newcomer: tuple[Path, dict[str, str]], key: bytes, status: int, said: str,
) -> None:
    """Both printed a traceback (EOFError, KeyboardInterrupt)."""
    cwd, env = newcomer
    terminal, command_side = os.openpty()
    process = subprocess.Popen([*IVR, "admin", "hash-password"], cwd=cwd, env=env,
                               stdin=command_side, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=_take_terminal)
    try:
        output = b""
        deadline = time.monotonic() + 60
        while b"Password: " not in output:  # the prompt, on the terminal or on stderr
            ready, _, _ = select.select([terminal, process.stderr], [], [],
                                        max(0.0, deadline - time.monotonic()))
            assert ready, f"no prompt within 60 s: {output!r}"
            chunk = (os.read(terminal, 1024) if terminal in ready
                     else process.stderr.read1(1024))  # type: ignore[union-attr]
            assert chunk, output
            output += chunk
        os.write(terminal, key)
        _, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
        os.close(command_side)
    assert process.returncode == status, errors
    assert b"Traceback" not in errors
    assert said in errors.decode()


def test_serve_refuses_a_plain_password_in_ivr_admin_users_without_printing_it(
    newcomer
) -> None:
    cwd, env = newcomer
    result = run_ivr(cwd, {**env, "IVR_ADMIN_USERS": '{"a":"hunter2-in-plain"}'},
                     "serve", "--port", str(free_port()))
    assert result.returncode == 2
    assert ("user 'a': the password is not a password hash: make one with "
            "`ivr admin hash-password`") in result.stderr
    assert "hunter2" not in result.stdout + result.stderr  # a secret is never printed
    assert redis_servers_in(cwd) == []


@pytest.mark.parametrize("url", ["redis+cluster://:s3cret@127.0.0.1:7000",
                                 "s3cret@127.0.0.1:6379"])
def test_serve_refuses_a_redis_url_it_cannot_use_without_printing_it(newcomer, url) -> None:
    cwd, env = newcomer
    result = run_ivr(cwd, {**env, "IVR_REDIS_URL": url}, "serve", "--port", str(free_port()))
    assert result.returncode == 2
    assert "IVR_REDIS_URL: must start with redis://, rediss://, unix://" in result.stderr
    assert ("redis+sentinel://, not redis+cluster://." if "://" in url
            else "redis+sentinel:// (it has none, or no // after it).") in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


def test_serve_on_a_port_in_use_says_so_before_starting_anything(newcomer) -> None:
    """It printed the webhook URLs and `ready: 6 flows`, then uvicorn's `[Errno 98] error while
    attempting to bind`, exit 3."""
    cwd, env = newcomer
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_ivr(cwd, env, "serve", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ivr: cannot start: port {port} on 127.0.0.1 is in use: stop what listens there "
        "(another `ivr serve`?), or choose another port with --port")
    assert redis_servers_in(cwd) == []
    assert not (cwd / "var").exists()  # no token, no Redis started


def test_an_empty_setting_is_unset_for_every_command(newcomer) -> None:
    """`IVR_ADMIN_USERS=` (how a .env or a compose file unsets it) was read as JSON and refused
    by every command."""
    cwd, env = newcomer
    (cwd / ".env").write_text("IVR_ADMIN_USERS=\nIVR_PUBLIC_URL=\n")
    result = run_ivr(cwd, {**env, "IVR_REDIS_URL": "", "IVR_LOG_LEVEL": ""}, "flows", "validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")
    assert redis_servers_in(cwd) == []


def test_serve_says_when_no_sentinel_knows_the_master(newcomer) -> None:
    cwd, env = newcomer
    port = free_port()
    url = f"redis+sentinel://:s3cret@127.0.0.1:{port}/mymaster"
    result = run_ivr(cwd, {**env, "IVR_REDIS_URL": url}, "serve", "--port", str(free_port()))
    assert result.returncode == 2
    assert "no sentinel there answered with that master" in result.stderr
    # Which Redis it tried, said before it tried.
    assert f"Redis: the master mymaster (db 0) as named by the sentinels at 127.0.0.1:{port}" \
        in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize("credentials", ["in-address", "in-query"])
def test_serve_logs_which_redis_it_uses_without_its_password(
    newcomer_serve: Callable[..., Served], tmp_path: Path, credentials: str
) -> None:
    """With IVR_REDIS_URL, nothing said which Redis the server used; redis-py also takes the
    password as ?password=..., which the log line kept."""
    shared = RedisProcess(tmp_path, "shared", config=f"requirepass {PASSWORD}\n")
    try:
        address = f"127.0.0.1:{shared.port}/0"
        url = (f"redis://:{PASSWORD}@{address}" if credentials == "in-address"
               else f"redis://{address}?password={PASSWORD}&socket_timeout=5")
        server = newcomer_serve(IVR_REDIS_URL=url)
        assert "<Sip>sip:gold@" in server.call(L.GOLD).stdout
        assert server.stop() == 0
    finally:
        shared.stop()
    log = server.log.read_text()
    assert f"Redis: redis://{address}" in log
    assert PASSWORD not in log
    assert "embedded Redis" not in log


ADMIN = "cli-admin-token-0123456789"


@pytest.fixture
def admin_server(newcomer_serve: Callable[..., Served]) -> Served:
    server = newcomer_serve(IVR_ADMIN_TOKEN=ADMIN)
    server.env["IVR_ADMIN_URL"] = server.url
    return server


def queues_cli(server: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return run_ivr(server.cwd, server.env, "queues", *args)


def test_queues_cli_lists_sets_shows_history_and_rolls_back(admin_server: Served) -> None:
    listing = queues_cli(admin_server, "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:3] == ["QUEUE", "SIP", "URI"]
    rows = [line.split()[:4] for line in listing.stdout.splitlines()[1:]]
    assert ["gold", "sip:gold@queues.example.com", "1", "seed"] in rows
    names = [row[0] for row in rows]
    assert names == sorted(names) and {"gold", "platinum", "standard"} <= set(names)

    changed = queues_cli(admin_server, "set", "gold", "sip:gold@pbx2.example.com")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == "gold updated: version 2, sip:gold@pbx2.example.com"
    assert "<Sip>sip:gold@pbx2.example.com</Sip>" in admin_server.call(L.GOLD).stdout

    shown = yaml.safe_load(queues_cli(admin_server, "show", "gold").stdout)
    assert shown["message_to"] == "+15550100101"  # set keeps the queue's other fields
    assert shown["updated_by"] == f"{getpass.getuser()} (admin token)"  # who ran `ivr queues`

    history = queues_cli(admin_server, "history", "gold").stdout.splitlines()
    assert history[0].split() == ["VERSION", "UPDATED", "AT", "UPDATED", "BY", "CHANGED"]
    assert [line.split()[0] for line in history[1:]] == ["2", "1"]
    assert history[1].endswith("  sip_uri")

    back = queues_cli(admin_server, "rollback", "gold", "1", "--yes")
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == "gold rolled back to version 1: now version 3; changed sip_uri"
    assert "<Sip>sip:gold@queues.example.com</Sip>" in admin_server.call(L.GOLD).stdout


def test_queues_cli_lists_the_queues_a_search_finds(admin_server: Served) -> None:
    found = queues_cli(admin_server, "list", "--search", "PLATINUM@")
    assert found.returncode == 0, found.stderr
    assert [line.split()[:2] for line in found.stdout.splitlines()[1:]] == [
        ["platinum", "sip:platinum@queues.example.com"]]
    none = queues_cli(admin_server, "list", "--search", "no such queue")
    assert (none.returncode, none.stdout.strip()) == (0, "no queue matches 'no such queue'")


def test_queues_cli_set_creates_a_queue_only_when_told(admin_server: Served) -> None:
    """A mistyped name at 3 a.m. made a new queue and left the real one unchanged."""
    typo = queues_cli(admin_server, "set", "golld", "sip:gold@pbx2.example.com")
    assert typo.returncode == 1
    assert "no queue 'golld'" in typo.stderr and "gold" in typo.stderr
    assert "--create" in typo.stderr
    assert "golld" not in queues_cli(admin_server, "list").stdout
    made = queues_cli(admin_server, "set", "golld", "sip:gold@pbx2.example.com", "--create")
    assert made.returncode == 0 and "golld created" in made.stdout


def test_queues_cli_reports_a_bad_uri_and_a_wrong_token_clearly(
    shared_admin_server: Served,
) -> None:
    admin_server = shared_admin_server
    bad = queues_cli(admin_server, "set", "gold", "http://gold")
    assert bad.returncode == 1
    assert "422: invalid input" in bad.stderr and "sip_uri: must start with sip:" in bad.stderr
    wrong = run_ivr(admin_server.cwd, {**admin_server.env, "IVR_ADMIN_TOKEN": "nope"},
                    "queues", "list")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "IVR_ADMIN_TOKEN" in wrong.stderr


def test_the_server_and_token_options_go_before_or_after_the_action(
    shared_admin_server: Served,
) -> None:
    admin_server = shared_admin_server
    env = {k: v for k, v in admin_server.env.items()
           if k not in ("IVR_ADMIN_URL", "IVR_ADMIN_TOKEN")}
    options = ("--server", admin_server.url, "--token", ADMIN)
    for args in (("queues", *options, "show", "gold"), ("queues", "show", "gold", *options),
                 ("calls", "tail", *options), ("calls", *options, "tail")):
        result = run_ivr(admin_server.cwd, env, *args)
        assert result.returncode == 0, (args, result.stderr)
    # Given in both places, the action's wins.
    both = run_ivr(admin_server.cwd, env, "queues", "--server", "http://127.0.0.1:1", "--token",
                   ADMIN, "list", "--server", admin_server.url)
    assert both.returncode == 0, both.stderr


def test_queues_export_writes_a_queues_file_that_seeds_the_same_configuration(
    admin_server: Served, tmp_path: Path
) -> None:
    queues_cli(admin_server, "set", "night", "sips:night@pbx.example.com:5061", "--create",
               "--overflow", "standard", "--fallback", "sip:night2@pbx.example.com")
    out = tmp_path / "exported.yaml"
    assert queues_cli(admin_server, "export", "-o", str(out)).returncode == 0
    exported = load_queue_file(out)
    assert exported.queues["night"].overflow == "standard"
    assert exported.queues["night"].fallback_sip_uris == ("sip:night2@pbx.example.com",)
    assert exported.queues["gold"].message_to == "+15550100101"
    shipped = load_queue_file(admin_server.cwd / "sip_config" / "queues.yaml")
    assert set(exported.queues) == set(shipped.queues) | {"night"}
    assert exported.queues["platinum"] == shipped.queues["platinum"]


def test_an_acknowledged_change_survives_kill_9_of_the_server_and_its_redis(
    admin_server: Served, newcomer_serve: Callable[..., Served],
) -> None:
    changed = queues_cli(admin_server, "set", "platinum", "sip:platinum@pbx2.example.com")
    assert changed.returncode == 0
    children = psutil.Process(admin_server.process.pid).children(recursive=True)
    # Redis first: killed before its parent, it never gets the SIGTERM that would let it
    # shut down cleanly. What was acknowledged must already be in the AOF.
    family = [p.pid for p in children if p.name() == "redis-server"]
    assert family
    family += [admin_server.process.pid] + [p.pid for p in children if p.pid not in family]
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    admin_server.process.wait()
    psutil.wait_procs([psutil.Process(p) for p in family if psutil.pid_exists(p)], timeout=10)
    restarted = newcomer_serve(IVR_ADMIN_TOKEN=ADMIN, IVR_ADMIN_URL=admin_server.url)
    assert "<Sip>sip:platinum@pbx2.example.com</Sip>" in restarted.call(L.PLATINUM).stdout
    restarted.env["IVR_ADMIN_URL"] = restarted.url
    history = queues_cli(restarted, "history", "platinum").stdout.splitlines()
    assert [line.split()[0] for line in history[1:]] == ["2", "1"]
    assert history[1].endswith("  sip_uri")


def test_call_answers_the_flows_questions_with_input(shared_serve: Served) -> None:
    server = shared_serve
    voice = server.call(L.GOLD, "--to", "+15005550102", "--input", "9", "--input", "2")
    assert voice.returncode == 0, voice.stderr
    assert voice.stderr.count("HTTP 200 from POST") == 3  # the call, two answers
    assert "/twilio/voice?turn=2" in voice.stderr
    assert "<Sip>sip:support@queues.example.com</Sip>" in voice.stdout
    sms = server.call("--channel", "messaging", L.GOLD, "--to", "+15005550102",
                      "--input", "sales")
    assert sms.returncode == 0, sms.stderr
    assert sms.stdout.count("<Response>") == 2 and "+15550100" in sms.stdout


def test_output_piped_to_a_reader_that_stopped_is_not_an_error() -> None:
    """`ivr queues show gold | head -2`: the reader leaves before the output is written. That
    ended in a BrokenPipeError traceback and status 1."""
    process = subprocess.Popen([*IVR, "flows", "schema"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the command has started up, let alone written
    errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, errors
    assert "Traceback" not in errors


def test_serve_starts_its_embedded_redis_again_when_it_dies(
    newcomer_serve: Callable[..., Served],
) -> None:
    """A kill -9 (or the OOM killer) of the embedded Redis: `ivr serve` owns it, so it starts it
    again on the same data; calls route all along and the server is ready again by itself."""
    server = newcomer_serve()
    first = redis_pid(server.cwd)
    os.kill(first, signal.SIGKILL)
    assert "<Sip>" in server.call(L.GOLD).stdout  # from memory, meanwhile
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the server never got its Redis back"
        time.sleep(0.2)
    second = redis_pid(server.cwd)
    assert second != first
    assert "<Sip>sip:gold@queues.example.com</Sip>" in server.call(L.GOLD).stdout
    assert server.stop() == 0
    assert not alive(second), "the restarted Redis outlived the server"
    assert "the embedded Redis (pid" in server.log.read_text()


def test_every_start_on_the_local_token_says_so_loudly(
    newcomer_serve: Callable[..., Served],
) -> None:
    """The first start warned that Twilio's webhooks would be refused; later starts, on the
    same local token, were silent about it."""
    first = newcomer_serve()
    assert first.stop() == 0
    second = newcomer_serve()
    assert second.call(L.GOLD).returncode == 0
    assert second.stop() == 0
    log = second.log.read_text()
    assert "TWILIO_AUTH_TOKEN is not set" in log and "LOCAL token" in log
    assert "generated a local token" not in log  # the same token as the first start's


# --- the quick start, with nothing set up ---------------------------------------------------------

def test_the_quick_start_changes_a_queue_and_tails_the_calls_with_no_setup(
    newcomer_serve: Callable[..., Served],
) -> None:
    """The README sent a newcomer to `ivr queues` and `ivr calls tail`, which said "no admin
    token", and with one on the client only "404: the admin API is disabled"."""
    server = newcomer_serve()
    token_file = server.cwd / "var" / "local_admin_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert server.call(L.GOLD).returncode == 0
    changed = run_ivr(server.cwd, server.env, "queues", "set", "standard",
                      "sip:standard@pbx2.example.com", "--server", server.url)
    assert changed.returncode == 0, changed.stderr
    assert "standard updated" in changed.stdout
    shown = yaml.safe_load(run_ivr(server.cwd, server.env, "queues", "show", "standard",
                                   "--server", server.url).stdout)
    assert shown["updated_by"] == f"{getpass.getuser()} (local admin token)"
    tail = run_ivr(server.cwd, server.env, "calls", "tail", "--server", server.url)
    assert tail.returncode == 0, tail.stderr
    assert " -> gold" in tail.stdout
    assert server.stop() == 0
    log = server.log.read_text()
    assert "LOCAL admin token in var/local_admin_token" in log
    assert "sign in with the local admin token in var/local_admin_token" in log
    assert token_file.read_text() not in log  # where it is, never what it is
    # The next start keeps the token, and says so again.
    token = token_file.read_text()
    again = newcomer_serve()
    assert token_file.read_text() == token
    assert again.stop() == 0
    assert "LOCAL admin token" in again.log.read_text()


def test_with_twilio_auth_token_set_no_local_admin_token_works_and_the_cli_says_why(
    newcomer_serve: Callable[..., Served],
) -> None:
    """Production: the admin API stays disabled until IVR_ADMIN_TOKEN or users are set, even
    where a local trial left its token behind."""
    trial = newcomer_serve()
    assert trial.stop() == 0
    production = newcomer_serve(TWILIO_AUTH_TOKEN="the-accounts-auth-token")
    listing = run_ivr(production.cwd, production.env, "queues", "list",
                      "--server", production.url)
    assert listing.returncode == 1
    assert "404: the admin API is disabled: set IVR_ADMIN_TOKEN on the server" in listing.stderr
    assert "with TWILIO_AUTH_TOKEN set, it makes no local admin token" in listing.stderr
    assert "LOCAL admin token" not in production.log.read_text()


def test_commands_run_from_another_directory_make_no_token_and_say_what_is_missing(
    shared_serve: Served, tmp_path: Path,
) -> None:
    """`ivr call` from another directory made ./var/local_twilio_auth_token there, signed
    with it, and got a 403."""
    server = shared_serve
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    call = run_ivr(elsewhere, server.env, "call", "--server", server.url, L.GOLD)
    assert call.returncode == 1
    assert "nothing to sign with: TWILIO_AUTH_TOKEN is not set and there is no local token " \
        "in var/local_twilio_auth_token" in call.stderr
    assert "run `ivr call` from the directory where it runs" in call.stderr
    assert "HTTP" not in call.stderr  # nothing was sent
    for command in (("queues", "list"), ("calls", "tail")):
        result = run_ivr(elsewhere, server.env, *command, "--server", server.url)
        assert result.returncode == 1
        assert "no admin token" in result.stderr and "var/local_admin_token" in result.stderr
    assert list(elsewhere.iterdir()) == []
    # Pointed at the server's data directory, they find its tokens.
    env = {**server.env, "IVR_DATA_DIR": str(server.cwd / "var")}
    assert "<Sip>" in run_ivr(elsewhere, env, "call", "--server", server.url, L.GOLD).stdout
    tail = run_ivr(elsewhere, env, "calls", "tail", "--server", server.url)
    assert tail.returncode == 0, tail.stderr
    assert list(elsewhere.iterdir()) == []
    # The local admin token goes to this machine only, never to a server elsewhere.
    remote = run_ivr(elsewhere, env, "calls", "tail", "--server", "http://ivr.example.invalid")
    assert remote.returncode == 1
    assert remote.stderr.strip() == (
        "ivr: no admin token: neither --token nor IVR_ADMIN_TOKEN is given, and the local admin "
        "token is sent only to a server on this machine, not to http://ivr.example.invalid: "
        "give that server's IVR_ADMIN_TOKEN.")


@pytest.mark.parametrize(
    ("args", "message"),
    [(["5551234567"], "write it in E.164, + and the country code: +15551234567 for a US or "
      "Canadian number"),
     (["+1 (555) 123-4567"], "without spaces or punctuation: +15551234567"),
     (["555-0100"], "e.g. +15551234567"),
     (["whatsapp:+15551234567", "--channel", "messaging"], "with --channel messaging --whatsapp"),
     (["client:alice", "--channel", "messaging"], "the caller 'client:alice'"),
     (["+15551234567", "--to", "15005550006"], "the number called (--to) '15005550006'")],
    ids=["national", "punctuated", "short", "whatsapp-prefix", "client-on-messaging", "to"])
def test_call_refuses_a_number_twilio_would_never_send_saying_how_to_write_it(
    newcomer, args: list[str], message: str
) -> None:
    cwd, env = newcomer
    result = run_ivr(cwd, env, "call", "--server", f"http://127.0.0.1:{free_port()}", *args)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1  # one line
    assert message in result.stderr
    assert "is `ivr serve` running?" not in result.stderr  # refused before it was sent


def test_call_sends_what_twilio_sends_as_from_a_client_or_a_sip_endpoint(
    shared_serve: Served,
) -> None:
    server = shared_serve
    for caller in ("client:alice", "sip:alice@example.sip.twilio.com"):
        result = server.call(caller)
        assert result.returncode == 0, result.stderr
        assert "<Sip>sip:standard@queues.example.com</Sip>" in result.stdout


ACCOUNT_FLOW = """\
name: account_check
description: An account number ended by the finish key, then a PIN of exactly four digits.
trigger:
  channels: [voice]
  numbers: ["+15005550199"]
fallback_queue: standard
steps:
  account:
    kind: ask
    prompt: "Your account number, then the hash key."
    retry_prompt: "Sorry."
    expect: digits
    min_digits: 6
    max_digits: 10
    save: account
    next: pin
    on_exhausted: to_standard
  pin:
    kind: ask
    prompt: "Your PIN."
    expect: digits
    min_digits: 4
    max_digits: 4
    save: pin
    next: done
    on_exhausted: to_standard
  done:
    kind: say
    text: "Account {{ vars.account }}, PIN {{ vars.pin }}."
    next: to_standard
  to_standard:
    kind: route
    queue: standard
"""


def test_keys_are_sent_as_twilio_sends_them_without_the_finish_key(
    shared_serve: Served,
) -> None:
    """`ivr call --input 12345678#` sent Digits=12345678#, which a digits question refused:
    Twilio never sends the finish key, stops at numDigits, and sends Digits empty for the
    finish key alone. (ACCOUNT_FLOW is in shared_serve's flows.)"""
    server = shared_serve
    result = server.call(L.GOLD, "--to", "+15005550199",
                         "--input", "#", "--input", "12345678#", "--input", "12345")
    assert result.returncode == 0, result.stderr
    assert "Sorry. Your account number" in result.stdout  # "#" alone: an empty answer
    assert "Account 12345678, PIN 1234." in result.stdout
    assert "<Sip>sip:standard@queues.example.com</Sip>" in result.stdout
    assert "5 not sent" in result.stderr  # past numDigits="4"
    simulated = run_ivr(server.cwd, server.env, "simulate", "account_check", "--channel",
                        "voice", "--from", L.GOLD, "--input", "12345678#", "--input", "12345")
    assert simulated.returncode == 0, simulated.stderr
    assert "Account 12345678, PIN 1234." in simulated.stdout


# --- settings that cannot be read ------------------------------------------------------------------

@pytest.mark.parametrize(
    "command", [["flows", "validate"], ["serve", "--port", "0"], ["call", "+15551234567"],
                ["queues", "list"], ["calls", "tail"]])
def test_an_admin_users_value_that_is_not_json_is_a_clean_settings_error_for_every_command(
    newcomer, command: list[str]
) -> None:
    """pydantic-settings decodes JSON settings before validating them, and its error was a
    traceback from every command."""
    cwd, env = newcomer
    secret = "pbkdf2_sha256$600000$c2FsdA==$aGFzaA=="
    result = run_ivr(cwd, {**env, "IVR_ADMIN_USERS": f"{{alice: {secret}}}"}, *command)
    assert result.returncode == 2
    assert result.stderr == (
        "ivr: invalid settings:\n  IVR_ADMIN_USERS: is not valid JSON: write it like "
        '{"alice": "<hash from `ivr admin hash-password`>"}\n')
    assert secret not in result.stdout + result.stderr
    assert not (cwd / "var").exists()


def test_a_settings_error_in_env_names_the_file_and_stops_an_asgi_server_cleanly(
    newcomer,
) -> None:
    cwd, env = newcomer
    (cwd / ".env").write_text('IVR_ADMIN_USERS={"alice": "pbkdf2_sha256$1$c2FsdA==$aA=="\n')
    validate = run_ivr(cwd, env, "flows", "validate")
    assert validate.returncode == 2
    assert "IVR_ADMIN_USERS (in .env): is not valid JSON" in validate.stderr
    # Under another ASGI server the app factory reads the settings: the same words, no traceback.
    uvicorn = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "ivr.app:create_app", "--port",
         str(free_port())], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert uvicorn.returncode == 1
    assert "ivr: invalid settings:\n  IVR_ADMIN_USERS (in .env): is not valid JSON" \
        in uvicorn.stderr
    assert "Traceback" not in uvicorn.stderr and "c2FsdA" not in uvicorn.stderr

# --- `ivr queues set` field by field, `ivr queues delete` -----------------------------------------
# Against the app under uvicorn in this process (real Redis): only the command runs on its own.


@pytest.fixture
def admin_api(make_settings: Callable[..., Settings],
              start_server: Callable[[Settings], ServerThread]) -> ServerThread:
    return start_server(make_settings(admin_token=ADMIN))


def api_client(server: ServerThread) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/admin/api", timeout=10,
                        headers={"Authorization": f"Bearer {ADMIN}", "X-IVR-Actor": "alice"})


def queue_in(server: ServerThread, name: str) -> dict[str, Any] | None:
    with api_client(server) as api:
        response = api.get(f"/queues/{name}")
    return response.json() if response.status_code == 200 else None


# Where the commands of these tests run: not the checkout, whose .env a developer may have.
OUTSIDE_CHECKOUT = Path(tempfile.gettempdir())


def queues_at(url: str, *args: str, stdin: int | None = subprocess.DEVNULL,
              ) -> subprocess.CompletedProcess[str]:
    """`ivr queues ARGS` against the server at `url`; stdin is not a terminal unless given."""
    return subprocess.run([*IVR, "queues", *args], cwd=OUTSIDE_CHECKOUT, stdin=stdin,
                          env=clean_env(IVR_ADMIN_URL=url, IVR_ADMIN_TOKEN=ADMIN),
                          capture_output=True, text=True, timeout=60)


class RecordingProxy:
    """An HTTP proxy to `upstream` that records each request (method, path, JSON body) and,
    just before forwarding the first write, runs `meanwhile`: another admin's change landing
    while the command works."""

    def __init__(self, upstream: str, meanwhile: Callable[[], None]) -> None:
        self.upstream, self.meanwhile = upstream, meanwhile
        self.requests: list[tuple[str, str, Any]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.forward,
                                           methods=["GET", "PUT", "PATCH", "DELETE", "POST"])])

    async def forward(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((request.method, request.url.path, json.loads(body or "null")))
        if request.method != "GET" and len(self.requests) == 1 + sum(
                method == "GET" for method, _, _ in self.requests):
            await run_in_threadpool(self.meanwhile)
        headers = {k: v for k, v in request.headers.items()
                   if k in ("authorization", "content-type", "x-ivr-actor", "if-match",
                            "if-none-match")}
        async with httpx.AsyncClient(base_url=self.upstream, timeout=10) as client:
            answer = await client.request(request.method, request.url.path, content=body,
                                          headers=headers, params=request.query_params)
        return Response(answer.content, answer.status_code, media_type="application/json",
                        headers={k: v for k, v in answer.headers.items() if k == "etag"})


def test_queues_set_sends_only_the_fields_given_so_a_change_made_meanwhile_is_kept(
        admin_api: ServerThread) -> None:
    """Issue 15: `ivr queues set` needed the SIP URI even to change message_to, and wrote back
    the whole record it had read; only the fields given may be written."""
    new_platinum = "sip:platinum@new-pbx.example.com"

    def alice_changes_the_sip_uri() -> None:
        with api_client(admin_api) as api:
            assert api.patch("/queues/platinum",
                             json={"sip_uri": new_platinum}).status_code == 200

    proxy = RecordingProxy(admin_api.url, alice_changes_the_sip_uri)
    with ServerThread(proxy.app) as proxied:
        changed = queues_at(proxied.url, "set", "platinum", "--message-to", "+15550100199")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == f"platinum updated: version 3, {new_platinum}"
    assert proxy.requests == [
        ("PATCH", "/admin/api/queues/platinum", {"message_to": "+15550100199"})]
    platinum = queue_in(admin_api, "platinum")
    assert platinum is not None
    assert (platinum["sip_uri"], platinum["message_to"], platinum["display_name"]) == (
        new_platinum, "+15550100199", "Platinum members")


def test_queues_set_clears_optional_fields_with_their_no_options(
        admin_api: ServerThread) -> None:
    made = queues_at(admin_api.url, "set", "night", "sip:night@pbx.example.com", "--create",
                     "--overflow", "standard", "--fallback", "sip:night2@pbx.example.com",
                     "--message-to", "+15550100104", "--display-name", "Night shift")
    assert made.returncode == 0, made.stderr
    cleared = queues_at(admin_api.url, "set", "night", "--no-overflow", "--no-fallback",
                        "--no-message-to", "--no-display-name")
    assert cleared.returncode == 0, cleared.stderr
    night = queue_in(admin_api, "night")
    assert night is not None
    assert {k: night[k] for k in ("sip_uri", "fallback_sip_uris", "overflow", "message_to",
                                  "display_name")} == {
        "sip_uri": "sip:night@pbx.example.com", "fallback_sip_uris": [], "overflow": None,
        "message_to": None, "display_name": None}


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [(("set", "gold"), 1, "nothing to change: give a SIP URI or an option"),
     (("set", "night", "--create", "--message-to", "+15550100104"), 1,
      "there is no queue 'night' yet: to create it, give its SIP URI"),
     (("set", "golld", "--message-to", "+15550100104"), 1,
      "no queue 'golld' (queues: "),
     (("set", "gold", "--overflow", "standard", "--no-overflow"), 2,
      "argument --no-overflow: not allowed with argument --overflow"),
     (("set", "gold", "--message-to", "555-0199"), 1,
      "message_to: must be an E.164 number")],
    ids=["nothing-given", "create-without-sip-uri", "unknown", "set-and-clear", "bad-number"],
)
def test_queues_set_refuses_what_it_cannot_do_saying_what_to_do_and_changes_nothing(
        admin_api: ServerThread, args: tuple[str, ...], status: int, message: str) -> None:
    result = queues_at(admin_api.url, *args)
    assert result.returncode == status, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    with api_client(admin_api) as api:
        assert api.get("/audit").json()["total"] == 0


def test_queues_set_that_changes_nothing_says_so_and_makes_no_version(
        admin_api: ServerThread) -> None:
    """Issue 15: `--no-overflow` on a queue without one answered `night updated: version 3`,
    and the audit log said "no field changed"."""
    assert queues_at(admin_api.url, "set", "night", "sip:night@pbx.example.com", "--create",
                     "--message-to", "+15550100104").returncode == 0
    assert queues_at(admin_api.url, "set", "night", "--display-name", "Night").returncode == 0
    again = queues_at(admin_api.url, "set", "night", "--no-overflow", "--display-name", "Night")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "night unchanged: version 2"
    with api_client(admin_api) as api:
        assert api.get("/audit").json()["total"] == 2
        assert [v["version"] for v in api.get("/queues/night/history").json()["versions"]] == [
            2, 1]


def answered(url: str, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`ivr queues ARGS` at a terminal (a pseudo-terminal), typing `answer`."""
    terminal, command_side = os.openpty()
    try:
        os.write(terminal, answer.encode() + b"\n")
        return queues_at(url, *args, stdin=command_side)
    finally:
        os.close(terminal)
        os.close(command_side)


def test_queues_delete_asks_at_a_terminal_and_deletes_only_on_yes(
        admin_api: ServerThread) -> None:
    assert queues_at(admin_api.url, "set", "night", "sip:night@pbx.example.com",
                     "--create").returncode == 0
    kept = answered(admin_api.url, "n", "delete", "night")
    assert "Delete queue night (calls go to sip:night@pbx.example.com; version 1" in kept.stderr
    assert kept.returncode == 1 and kept.stderr.endswith("? [y/N] ivr: not deleted\n")
    assert queue_in(admin_api, "night") is not None
    deleted = answered(admin_api.url, "y", "delete", "night")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == (
        "night deleted; its history is kept: `ivr queues rollback night 1` brings it back")
    assert queue_in(admin_api, "night") is None
    back = queues_at(admin_api.url, "rollback", "night", "1", "--yes")
    assert back.returncode == 0 and queue_in(admin_api, "night") is not None


def test_queues_delete_without_a_terminal_needs_yes(admin_api: ServerThread) -> None:
    assert queues_at(admin_api.url, "set", "night", "sip:night@pbx.example.com",
                     "--create").returncode == 0
    refused = queues_at(admin_api.url, "delete", "night")
    assert refused.returncode == 1
    assert "to delete it from a script, add --yes" in refused.stderr
    assert queue_in(admin_api, "night") is not None
    deleted = queues_at(admin_api.url, "delete", "night", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert queue_in(admin_api, "night") is None


def test_queues_delete_says_plainly_what_still_uses_a_queue(admin_api: ServerThread) -> None:
    assert queues_at(admin_api.url, "set", "spare", "sip:s@pbx.example.com", "--create",
                     "--overflow", "standard").returncode == 0
    assert queues_at(admin_api.url, "set", "night", "sip:n@pbx.example.com", "--create",
                     "--overflow", "spare").returncode == 0
    for name, reason in (("gold", ("queue 'gold' is routed to by flows version 1 "
                                   "(flow loyalty_routing)")),
                         ("vip", ("queue 'vip' is routed to by flows version 1 "
                                  "(flows new_vs_returning, vip_by_email)")),
                         ("spare", "queue 'spare' is the overflow of night")):
        refused = queues_at(admin_api.url, "delete", name, "--yes")
        assert refused.returncode == 1
        assert refused.stderr.strip() == f"ivr: not deleted: {reason}; change that first"
        assert queue_in(admin_api, name) is not None
    unknown = queues_at(admin_api.url, "delete", "nope", "--yes")
    assert unknown.returncode == 1 and "no queue 'nope' (queues: " in unknown.stderr


def answered_after(url: str, meanwhile: Callable[[], None], *args: str,
                   command: str = "queues") -> tuple[int, str, str]:
    """`ivr queues ARGS` (or another `command`) at a terminal, answering yes once `meanwhile`
    has run (after the question is on the screen); its exit status, output and errors."""
    terminal, command_side = os.openpty()
    process = subprocess.Popen(
        [*IVR, command, *args], cwd=OUTSIDE_CHECKOUT, stdin=command_side,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=clean_env(IVR_ADMIN_URL=url, IVR_ADMIN_TOKEN=ADMIN))
    try:
        assert process.stderr is not None
        prompt = b""
        deadline = time.monotonic() + 60
        while b"[y/N]" not in prompt:  # the question is on the screen
            ready, _, _ = select.select([process.stderr], [], [],
                                        max(0.0, deadline - time.monotonic()))
            assert ready, f"no question within 60 s: {prompt!r}"
            chunk = process.stderr.read1(1024)
            assert chunk, prompt
            prompt += chunk
        meanwhile()
        os.write(terminal, b"y\n")
        output, errors = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # a failed step above: stop it, by its id
            process.kill()
            process.wait()
        os.close(terminal)
        os.close(command_side)
    return process.returncode, output.decode(), (prompt + errors).decode()


def test_queues_delete_refuses_when_the_queue_changed_while_asking(
        admin_api: ServerThread) -> None:
    """The yes is for what was shown: a change made before it was typed stops the delete."""
    assert queues_at(admin_api.url, "set", "night", "sip:n@pbx.example.com",
                     "--create").returncode == 0

    def someone_changes_night() -> None:
        with api_client(admin_api) as api:
            assert api.patch("/queues/night", json={"sip_uri": "sip:n2@pbx.example.com"}
                             ).status_code == 200

    status, _, errors = answered_after(admin_api.url, someone_changes_night, "delete", "night")
    assert status == 1
    assert "not deleted: queue 'night' changed while you were asked" in errors
    assert queue_in(admin_api, "night") is not None


# --- `ivr queues rollback` and `ivr queues history` ------------------------------------------------

GOLD_NOW = "sip:gold@mine.example.com"


def gold_with_a_fallback_then_a_new_sip_uri(server: ServerThread) -> None:
    """gold's versions: 1 (seeded), 2 (a fallback), 3 (a new SIP URI)."""
    with api_client(server) as api:
        for change in ({"fallback_sip_uris": ["sip:gold-b@pbx.example.com"]},
                       {"sip_uri": GOLD_NOW}):
            assert api.patch("/queues/gold", json=change).status_code == 200


def test_queues_rollback_shows_what_it_changes_and_asks_at_a_terminal(
        admin_api: ServerThread) -> None:
    """Issue 15: `ivr queues rollback gold 1` cleared the fallbacks silently and printed the
    SIP URI, which had not changed."""
    gold_with_a_fallback_then_a_new_sip_uri(admin_api)
    kept = answered(admin_api.url, "n", "rollback", "gold", "1")
    assert kept.returncode == 1 and kept.stderr.endswith("? [y/N] ivr: not rolled back\n")
    preview = kept.stderr.splitlines()
    assert preview[0].startswith("Version 1 of gold was saved by seed at ")
    assert preview[1:5] == [
        "Restoring it changes, now (version 3) → in version 1:",
        f"  sip_uri            {GOLD_NOW} → sip:gold@queues.example.com",
        "  fallback_sip_uris  sip:gold-b@pbx.example.com → (none)",
        "Unchanged: overflow, message_to, display_name."]
    assert preview[5].startswith("Restore version 1 of gold? [y/N]")
    assert max(len(line) for line in preview) <= 100
    assert queue_in(admin_api, "gold")["version"] == 3  # type: ignore[index]

    restored = answered(admin_api.url, "y", "rollback", "gold", "1")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip() == (
        "gold rolled back to version 1: now version 4; changed sip_uri, fallback_sip_uris")
    gold = queue_in(admin_api, "gold")
    assert gold is not None
    assert (gold["version"], gold["sip_uri"], gold["fallback_sip_uris"]) == (
        4, "sip:gold@queues.example.com", [])


def test_queues_rollback_without_a_terminal_needs_yes(admin_api: ServerThread) -> None:
    gold_with_a_fallback_then_a_new_sip_uri(admin_api)
    refused = queues_at(admin_api.url, "rollback", "gold", "2")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "ivr: not rolled back: restoring version 2 of queue 'gold' asks for a yes at a "
        "terminal; to roll it back from a script, add --yes")
    assert queue_in(admin_api, "gold")["version"] == 3  # type: ignore[index]
    done = queues_at(admin_api.url, "rollback", "gold", "2", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gold rolled back to version 2: now version 4; changed sip_uri"


def test_queues_rollback_refuses_when_the_queue_changed_while_asking(
        admin_api: ServerThread) -> None:
    """The yes is for the difference shown: a change made before it was typed stops it."""
    gold_with_a_fallback_then_a_new_sip_uri(admin_api)

    def someone_changes_gold() -> None:
        with api_client(admin_api) as api:
            assert api.patch("/queues/gold", json={"message_to": "+15550100199"}
                             ).status_code == 200

    status, _, errors = answered_after(admin_api.url, someone_changes_gold,
                                       "rollback", "gold", "1")
    assert status == 1
    assert "not rolled back: queue 'gold' changed while you were asked" in errors
    gold = queue_in(admin_api, "gold")
    assert gold is not None
    assert (gold["version"], gold["sip_uri"]) == (4, GOLD_NOW)


def test_queues_rollback_to_the_values_a_queue_has_says_so_and_asks_nothing(
        admin_api: ServerThread) -> None:
    with api_client(admin_api) as api:
        assert api.patch("/queues/gold", json={"sip_uri": GOLD_NOW}).status_code == 200
        assert api.patch("/queues/gold", json={"sip_uri": "sip:gold@queues.example.com"}
                         ).status_code == 200
    same = queues_at(admin_api.url, "rollback", "gold", "1")
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip() == "gold unchanged: version 3 has the values of version 1 already"
    assert queue_in(admin_api, "gold")["version"] == 3  # type: ignore[index]
    unknown = queues_at(admin_api.url, "rollback", "gold", "9", "--yes")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == ("ivr: queue 'gold' has no version 9 (its versions are 1 "
                                      "to 3: see `ivr queues history gold`)")


def test_queues_rollback_of_a_deleted_queue_shows_what_it_brings_back(
        admin_api: ServerThread) -> None:
    assert queues_at(admin_api.url, "set", "night", "sip:night@pbx.example.com", "--create",
                     "--overflow", "standard").returncode == 0
    assert queues_at(admin_api.url, "delete", "night", "--yes").returncode == 0
    back = answered(admin_api.url, "y", "rollback", "night", "1")
    assert back.returncode == 0, back.stderr
    assert back.stderr.splitlines()[1:4] == [
        "Queue night was deleted: restoring version 1 creates it again with:",
        "  sip_uri   sip:night@pbx.example.com", "  overflow  standard"]
    assert back.stdout.strip() == "night re-created from version 1: now version 2"
    assert queue_in(admin_api, "night") is not None


def test_queues_history_says_what_each_version_changed_in_100_columns(
        admin_api: ServerThread) -> None:
    """Issue 15: history showed only the SIP URI, so versions that differ in their fallbacks,
    overflow or messaging target looked the same."""
    gold_with_a_fallback_then_a_new_sip_uri(admin_api)
    with api_client(admin_api) as api:
        assert api.patch("/queues/gold", json={
            "sip_uri": "sip:gold@queues.example.com", "fallback_sip_uris": [],
            "overflow": "standard"}).status_code == 200
    history = queues_at(admin_api.url, "history", "gold")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert [(line[:9].strip(), line.split("  ")[-1].strip()) for line in lines] == [
        ("VERSION", "CHANGED"),
        ("4", "sip_uri, fallback_sip_uris, overflow"),
        ("3", "sip_uri"),
        ("2", "fallback_sip_uris"),
        ("1", "sip_uri, message_to, display_name")]
    assert "alice (admin token)" in lines[1]
    assert max(len(line) for line in lines) <= 100


@pytest.mark.parametrize("server", ["localhost:8100", "127.0.0.1:8100", "ftp://127.0.0.1:8100"])
def test_a_server_given_without_http_is_named_as_such_before_anything_is_sent(
        tmp_path: Path, server: str) -> None:
    """It was refused as a server elsewhere ("the local admin token is sent only to a server on
    this machine, not to localhost:8100"), which is not what is wrong."""
    for env in (clean_env(IVR_ADMIN_URL=server), clean_env()):
        args = ("queues", "list", *(() if "IVR_ADMIN_URL" in env else ("--server", server)))
        result = run_ivr(tmp_path, env, *args)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"ivr: {server!r} is not a server's URL: write it as http://HOST:PORT (--server or "
            "IVR_ADMIN_URL), e.g. http://127.0.0.1:8000")
