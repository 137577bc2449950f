"""Secrets (IVR_SECRET_<NAME>, read by flows as `secrets.<name>`): read from the environment and
`.env`, readable only where a fetch sends them, and never shown: not in a log line, a call trace,
a simulation or an error message. The server's fetch goes to a real HTTP server on 127.0.0.1,
which checks that it got the secret."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
from jinja2.utils import htmlsafe_json_dumps
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ivr.flows.http import AiohttpClient, HttpConnectionError
from ivr.flows.loader import FlowLoadError, load_flows
from ivr.flows.steps.fetch import _upstream
from ivr.logs import JsonFormatter, TextFormatter, hide_secrets
from ivr.redis.call_traces import CALLS_KEY
from ivr.settings import Settings
from tests.conftest import ROOT, Served, clean_env, run_ivr
from tests.servers import ServerThread, free_port

# Characters that URL-encoding, JSON, a query string and Python's repr each write their own way.
TOKEN = "Tok3n/with+special=chars&it's\"quoted\""
# The forms the value takes in a URL (a flow's `urlencode`, a query string), in JSON (a flow's
# `tojson` too) and in an exception's message.
TOKEN_FORMS = (TOKEN, quote(TOKEN, safe=""), quote(TOKEN), json.dumps(TOKEN)[1:-1],
               htmlsafe_json_dumps(TOKEN)[1:-1], repr(TOKEN)[1:-1])
CALLER = "+15550000001"

SECRET_FLOW = """\
name: secret_lookup
trigger: {channels: [voice], default: true}
fallback_queue: standard
steps:
  lookup:
    kind: fetch
    method: POST
    url: "{{ settings.loyalty_api_url }}/crm/{{ contact.number | urlencode }}?key={{ secrets.crm_token | urlencode }}"
    headers:
      Authorization: "Bearer {{ secrets.crm_token }}"
      Content-Type: application/json
    body: '{"token": {{ secrets.crm_token | tojson }}}'
    save: {tier: tier}
    next: by_tier
    on_error: by_tier
  by_tier:
    kind: branch
    value: vars.tier
    cases: [{equals: gold, next: audit}]
    else: to_standard
  audit:
    # A template that fails on the secret: its error, which quotes the value, is logged.
    kind: fetch
    method: POST
    url: "{{ settings.loyalty_api_url }}/audit"
    body: "{{ [].index(secrets.crm_token) }}"
    next: to_gold
    on_error: to_gold
  to_gold: {kind: route, queue: gold}
  to_standard: {kind: route, queue: standard}
"""


def assert_hidden(text: str, where: str) -> None:
    for form in TOKEN_FORMS:
        assert form not in text, f"the secret ({form!r}) is in {where}"


# --- settings ---------------------------------------------------------------------------------

def test_every_ivr_secret_variable_is_a_secret_named_in_lower_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("IVR_SECRET_CRM_TOKEN=from-dotenv\nIVR_SECRET_MAPS_KEY=maps-key-1\n"
                                   "IVR_SECRET_BLANK=\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IVR_SECRET_CRM_TOKEN", TOKEN)  # the environment wins over .env
    monkeypatch.setenv("IVR_SECRET_Billing_Key", "billing-key")
    monkeypatch.setenv("IVR_SECRETS", '{"other_key": "other-key-1"}')  # not a way to set one
    settings = Settings()
    assert settings.flow_secrets() == {"crm_token": TOKEN, "maps_key": "maps-key-1",
                                       "billing_key": "billing-key"}  # an empty one is unset
    assert_hidden(repr(settings), "the settings' repr")
    assert_hidden(str(settings.secrets), "the secrets' str")


def test_a_secret_whose_name_is_not_an_identifier_is_a_settings_error_without_its_value(
    tmp_path: Path
) -> None:
    env = clean_env(**{"IVR_SECRET_CRM-TOKEN": TOKEN, "IVR_SECRET_2FA": TOKEN,
                       "IVR_SECRET_ITEMS": TOKEN})
    result = run_ivr(tmp_path, env, "flows", "validate")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "ivr: invalid settings:",
        "  IVR_SECRET_CRM-TOKEN: the name after IVR_SECRET_ must start with a letter and hold "
        "only letters, digits and _, at most 64 characters",
        "  IVR_SECRET_2FA: the name after IVR_SECRET_ must start with a letter and hold only "
        "letters, digits and _, at most 64 characters",
        "  IVR_SECRET_ITEMS: 'items' cannot name a secret: templates read "
        "secrets.items as something else"]
    # Nor does pydantic's own message, for a program that builds Settings itself (a value short
    # enough that pydantic would not cut it).
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, secrets={"crm-token": "hunter2"})
    assert "hunter2" not in str(refused.value)


def test_a_secret_too_short_to_hide_in_logs_is_a_settings_error_without_its_value(
    tmp_path: Path
) -> None:
    """Every log line shows `[secret NAME]` where a secret's value would be: a value of `1`
    would hide every 1 in every line (masked numbers too), and say what the secret is."""
    result = run_ivr(tmp_path, clean_env(IVR_SECRET_PIN="1234567"), "flows", "validate")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "ivr: invalid settings:",
        "  IVR_SECRET_PIN: at least 8 characters: a shorter value could not be hidden in logs "
        "without hiding ordinary text"]
    assert "1234567" not in result.stderr


# --- where a flow may read a secret -----------------------------------------------------------

def write_flow(directory: Path, steps: str, declared: str = "") -> Path:
    path = directory / "flow.yaml"
    path.write_text(f"""\
trigger: {{channels: [voice, messaging], default: true}}
fallback_queue: standard
{declared}
steps:
{steps}""")
    return path


TO_STANDARD = "  to_standard: {kind: route, queue: standard}\n"


LOOKUP = """\
  lookup:
    kind: fetch
    url: "https://crm.example.com/c?key={{ secrets.crm_key }}"
    headers: {Authorization: "{% if secrets.crm_token %}Bearer {{ secrets.crm_token }}{% endif %}"}
    body: "{{ secrets.crm_body }}"
    next: to_standard
    on_error: to_standard
""" + TO_STANDARD


def test_a_fetch_reads_secrets_in_its_url_headers_and_body_when_they_are_set(
    tmp_path: Path
) -> None:
    write_flow(tmp_path, LOOKUP, declared="secrets: {crm_token: {optional: true}}")
    required = {"crm_key", "crm_body"}
    assert load_flows(tmp_path, secrets=required).flows["flow"]
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, secrets={"crm_token"})
    assert [p.removeprefix(f"{tmp_path / 'flow.yaml'}: ") for p in refused.value.problems] == [
        "steps.lookup.url: secrets.crm_key is not set: set IVR_SECRET_CRM_KEY, or declare it "
        "optional in the flow (secrets: {crm_key: {optional: true}})",
        "steps.lookup.body: secrets.crm_body is not set: set IVR_SECRET_CRM_BODY, or declare "
        "it optional in the flow (secrets: {crm_body: {optional: true}})"]


def test_an_unset_secret_whose_name_is_close_to_a_set_one_is_told_as_a_misspelling(
    tmp_path: Path
) -> None:
    """`secrets.crm_tokn` reads as empty: the API refuses the request and the flow takes its
    error exit, as if the caller were unknown. Only a name very close to a set one is told so
    (crm_key is not crm_token: see the test above)."""
    path = write_flow(tmp_path, """\
  lookup:
    kind: fetch
    url: "https://crm.example.com/c"
    headers: {Authorization: "Bearer {{ secrets.crm_tokn }}"}
    next: to_standard
    on_error: to_standard
""" + TO_STANDARD)
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, secrets={"crm_token", "maps_key"})
    assert refused.value.problems == [
        f"{path}: steps.lookup.headers.Authorization: secrets.crm_tokn is not set: did you mean "
        "'crm_token'? (IVR_SECRET_CRM_TOKEN is set)"]


@pytest.mark.parametrize(("step", "field"), [
    ("{kind: say, text: 'Your key is {{ secrets.crm_token }}', next: to_standard}", "text"),
    ("{kind: say, text: Hi, voice: '{{ secrets.crm_token }}', next: to_standard}", "voice"),
    ("{kind: set, vars: {token: '{{ secrets.crm_token }}'}, next: to_standard}", "vars.token"),
    ("{kind: set, contact: {token: '{{ secrets.crm_token }}'}, next: to_standard}",
     "contact.token"),
    ("{kind: branch, cases: [{when: 'secrets.crm_token', next: to_standard}], "
     "else: to_standard}", "cases.0.when"),
    ("{kind: branch, value: secrets.crm_token, cases: [{equals: x, next: to_standard}], "
     "else: to_standard}", "value"),
    ("{kind: ask, prompt: 'Code {{ secrets.crm_token }}?', next: to_standard, "
     "on_exhausted: to_standard}", "prompt"),
    ("{kind: route, queue: standard, message: '{{ secrets.crm_token }}'}", "message"),
])
def test_a_secret_read_outside_a_fetch_is_a_load_error_naming_the_step_and_field(
    tmp_path: Path, step: str, field: str
) -> None:
    path = write_flow(tmp_path, f"  first: {step}\n" + (TO_STANDARD if field != "message" else ""))
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, secrets={"crm_token"})
    assert refused.value.problems == [
        f"{path}: steps.first.{field}: secrets.crm_token can only be read in a fetch step's "
        "url, headers and body"]


def test_the_commands_check_a_flows_secrets_against_those_set_where_they_run(
    checkout: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = checkout
    unset = {k: v for k, v in env.items() if k != "IVR_SECRET_CRM_TOKEN"}
    problem = (f"{Path('flows') / 'secret_lookup.yaml'}: steps.lookup.url: secrets.crm_token "
               "is not set: set IVR_SECRET_CRM_TOKEN, or declare it optional in the flow "
               "(secrets: {crm_token: {optional: true}})")
    validated = run_ivr(cwd, unset, "flows", "validate")
    assert validated.returncode == 1
    assert validated.stdout.splitlines()[0] == problem
    simulated = run_ivr(cwd, unset, "simulate", "secret_lookup", "--channel", "voice",
                        "--from", CALLER)
    assert (simulated.returncode, simulated.stderr.strip()) == (1, problem)
    served = run_ivr(cwd, unset, "serve", "--port", str(free_port()))
    assert served.returncode == 2 and problem in served.stderr, served.stderr
    assert run_ivr(cwd, env, "flows", "validate").stdout.strip() == "1 flow OK"


# --- never shown ------------------------------------------------------------------------------

class Crm:
    """Records what each request carried; /crm/... answers {"tier": "gold"}."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.answer, methods=["POST"])])

    async def answer(self, request: Request) -> Response:
        self.requests.append({"path": request.url.path, "key": request.query_params.get("key"),
                              "authorization": request.headers.get("authorization"),
                              "body": await request.body()})
        return JSONResponse({"tier": "gold"})


@pytest.fixture
def crm() -> Iterator[tuple[Crm, str]]:
    api = Crm()
    with ServerThread(api.app()) as server:
        yield api, server.url


@pytest.fixture
def checkout(tmp_path: Path, crm: tuple[Crm, str], redis_url: str
             ) -> tuple[Path, dict[str, str]]:
    """A directory with the secret-reading flow and the shipped queues, and the environment
    that serves it: the secret set, JSON logs at debug level, the test Redis."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "secret_lookup.yaml").write_text(SECRET_FLOW)
    shutil.copytree(ROOT / "sip_config", tmp_path / "sip_config")
    return tmp_path, clean_env(IVR_SECRET_CRM_TOKEN=TOKEN, IVR_LOYALTY_API_URL=crm[1],
                               IVR_REDIS_URL=redis_url, IVR_LOG_FORMAT="json",
                               IVR_LOG_LEVEL="debug")


def test_a_secret_reaches_its_api_and_no_log_line_or_call_trace(
    checkout: tuple[Path, dict[str, str]], crm: tuple[Crm, str], redis_url: str
) -> None:
    cwd, env = checkout
    served = Served(cwd, env)
    try:
        call = served.call(CALLER)
        metrics = httpx.get(served.url + "/metrics", timeout=10).text
    finally:
        served.stop()
    assert_hidden(metrics, "/metrics")
    assert call.returncode == 0, call.stderr
    # The template that failed on the secret sent the call to the fallback queue.
    assert "<Sip>sip:standard@queues.example.com</Sip>" in call.stdout

    api, _ = crm
    assert [{**r, "body": json.loads(r["body"])} for r in api.requests] == [
        {"path": f"/crm/{CALLER}", "key": TOKEN, "authorization": f"Bearer {TOKEN}",
         "body": {"token": TOKEN}}]

    log = served.log.read_text()
    assert "flow secret_lookup failed in step 'audit'" in log
    assert "'[secret crm_token]' is not in list" in log  # the error's text, the value hidden
    assert_hidden(log, "the server's log")

    with redis.Redis.from_url(redis_url, decode_responses=True) as store:
        entries = store.zrange(CALLS_KEY, 0, -1)
    assert len(entries) == 1
    trace = json.loads(entries[0])
    assert trace["fetches"]["lookup"]["outcome"] == "ok"
    assert trace["fallback_reason"] == "ValueError in step 'audit'"
    assert_hidden(entries[0], "the call trace")


def test_a_simulation_shows_a_secret_by_name_and_its_mocks_name_it_so(
    checkout: tuple[Path, dict[str, str]], crm: tuple[Crm, str]
) -> None:
    cwd, env = checkout
    url = f"{crm[1]}/crm/%2B{CALLER[1:]}?key=[secret crm_token]"
    args = ["simulate", "secret_lookup", "--channel", "voice", "--from", CALLER,
            "--mock", f'POST {url}=200:{{"tier": "gold"}}']
    printed = run_ivr(cwd, env, *args)
    assert printed.returncode == 0, printed.stderr
    assert f"  http: POST {url} -> 200" in printed.stdout.splitlines()
    assert "unmocked" not in printed.stdout and "never requested" not in printed.stdout
    assert_hidden(printed.stdout + printed.stderr, "the simulation")

    as_json = run_ivr(cwd, env, *args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    simulation = json.loads(as_json.stdout)
    assert simulation["turns"][0]["requests"] == [{"method": "POST", "url": url, "answer": 200}]
    assert_hidden(as_json.stdout + as_json.stderr, "the simulation's JSON")
    assert crm[0].requests == []  # offline


def test_a_mock_naming_a_secret_that_is_not_set_is_refused(
    checkout: tuple[Path, dict[str, str]], crm: tuple[Crm, str]
) -> None:
    cwd, env = checkout
    result = run_ivr(cwd, env, "simulate", "secret_lookup", "--channel", "voice", "--from",
                     CALLER, "--mock", f"POST {crm[1]}/crm/x?key=[secret crm_tokn]=200:{{}}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ivr: mock 'POST {crm[1]}/crm/x?key=[secret crm_tokn]': secrets.crm_tokn is not set "
        "(IVR_SECRET_CRM_TOKN)")


def test_a_secret_in_a_urls_user_part_names_no_breaker_or_metric() -> None:
    url = f"https://api:{quote(TOKEN, safe='')}@crm.example.com:8443/customers?x=1"
    assert _upstream(url) == "crm.example.com:8443"
    assert _upstream("https://crm.example.com/c") == "crm.example.com"


@pytest.mark.parametrize("url", [f"{TOKEN}/customers", f"ftp://crm.example.com/?key={TOKEN}",
                                 f"http://127.0.0.1:{TOKEN}/customers",
                                 f"http://{quote(TOKEN, safe='')}\x00/customers"])
def test_an_http_client_error_does_not_quote_a_url_that_holds_a_secret(url: str) -> None:
    async def fetch() -> None:
        client = AiohttpClient()
        try:
            await client.send("GET", url, {}, None, 1.0, 1024)
        finally:
            await client.aclose()

    with pytest.raises(HttpConnectionError) as refused:
        asyncio.run(fetch())
    assert str(refused.value).startswith("invalid URL: ")
    assert_hidden(str(refused.value), "the error")


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()],
                         ids=["text", "json"])
def test_a_log_line_shows_each_form_of_a_secret_by_its_name(formatter: logging.Formatter
                                                            ) -> None:
    hide_secrets({"crm_token": TOKEN, "maps_key": "short"})
    try:
        record = logging.LogRecord("ivr.test", logging.WARNING, __file__, 1,
                                   "sent %s; maps short", (" and ".join(TOKEN_FORMS),), None)
        record.__dict__["url"] = f"https://crm.example.com/?key={TOKEN_FORMS[1]}"  # extra=
        line = formatter.format(record)
    finally:
        hide_secrets({})
    assert_hidden(line, "the log line")
    assert line.count("[secret crm_token]") == len(TOKEN_FORMS) + isinstance(
        formatter, JsonFormatter)
    assert "maps [secret maps_key]" in line
