"""`ivr flows validate | graph | schema` and `ivr simulate`, driven through their argparse commands
with settings read from IVR_* environment variables, as `ivr` reads them."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ivr import flows_cli
from ivr.settings import Settings
from tests.conftest import clean_env, run_ivr
from tests.servers import ServerThread, free_port
from tests.test_flow_loader import VIP_BY_SEGMENT

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "flows" / "loyalty_routing.yaml"
QUEUES = """
queues:
  gold: {sip_uri: "sip:gold@queues.example.com"}
  platinum: {sip_uri: "sip:platinum@queues.example.com", message_to: "+15550100102"}
  standard: {sip_uri: "sip:standard@queues.example.com", message_to: "+15550100103"}
  sales: {sip_uri: "sip:sales@queues.example.com"}
"""
GOLD_MOCK = 'http://loyalty.invalid/customers/%2B15550000001=200:{"loyaltyStatus": "gold"}'


Ivr = Callable[..., tuple[int, str, str]]


@pytest.fixture
def ivr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Ivr:
    """Run `ivr ARGS...` with IVR_* variables; returns (exit status, stdout, stderr)."""
    for name in ("IVR_FLOWS_DIR", "IVR_SIP_CONFIG", "IVR_LOYALTY_API_URL", "IVR_LOYALTY_API_TOKEN",
                 "IVR_DECISION_DEADLINE"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str, **env: str) -> tuple[int, str, str]:
        env.setdefault("IVR_FLOWS_DIR", str(ROOT / "flows"))
        env.setdefault("IVR_SIP_CONFIG", str(ROOT / "sip_config" / "queues.yaml"))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        parser = argparse.ArgumentParser(prog="ivr")
        flows_cli.add_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        status = args.handler(args, Settings(_env_file=None))
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def flows_dir(tmp_path: Path) -> Path:
    """A flows directory holding a copy of the reference flow, and a queues file beside it."""
    (tmp_path / "flows").mkdir()
    shutil.copy(REFERENCE, tmp_path / "flows" / REFERENCE.name)
    (tmp_path / "queues.yaml").write_text(QUEUES)
    return tmp_path / "flows"


# --- validate ---------------------------------------------------------------------------------

def test_validate_passes_on_the_shipped_flows_and_queues(ivr: Ivr) -> None:
    status, out, _ = ivr("flows", "validate")
    count = len(list((ROOT / "flows").glob("*.yaml")))
    assert (status, out) == (0, f"{count} flow{'s' if count != 1 else ''} OK\n")


BROKEN = {
    "unreachable.yaml": """
trigger: {channels: [voice], numbers: ["+15005550196"]}
fallback_queue: standard
steps:
  greet: {kind: say, text: Hello, next: to_standard}
  to_standard: {kind: route, queue: standard}
  orphan: {kind: end}
""",
    "unknown_queue.yaml": """
trigger: {channels: [voice], numbers: ["+15005550197"]}
fallback_queue: standard
steps:
  to_vip: {kind: route, queue: vip}
""",
    "no_else.yaml": """
trigger: {channels: [voice], numbers: ["+15005550198"]}
fallback_queue: standard
steps:
  pick: {kind: branch, value: vars.tier, cases: [{equals: gold, next: to_gold}]}
  to_gold: {kind: route, queue: gold}
""",
    "bad_template.yaml": """
trigger: {channels: [voice], numbers: ["+15005550199"]}
fallback_queue: standard
steps:
  greet: {kind: say, text: "Hello {{ contact.number ", next: to_standard}
  to_standard: {kind: route, queue: standard}
""",
    "unknown_next.yaml": """
trigger: {channels: [messaging], numbers: ["+15005550199"]}
fallback_queue: standard
steps:
  greet: {kind: say, text: Hello, next: nowhere}
""",
    "spin.yaml": """
trigger: {channels: [messaging], numbers: ["+15005550198"]}
fallback_queue: standard
steps:
  a: {kind: goto, next: b}
  b: {kind: goto, next: a}
""",
    "no_schedule.yaml": """
trigger: {channels: [messaging], numbers: ["+15005550197"]}
fallback_queue: standard
steps:
  check: {kind: hours, schedule: office, open: to_sales, closed: to_sales}
  to_sales: {kind: route, queue: sales}
""",
    "second_default.yaml": """
trigger: {channels: [voice], default: true}
fallback_queue: standard
steps:
  to_standard: {kind: route, queue: standard}
""",
}


def test_validate_prints_each_problem_with_its_file_and_step_and_exits_1(
        ivr: Ivr, flows_dir: Path) -> None:
    for name, text in BROKEN.items():
        (flows_dir / name).write_text(text)
    status, out, err = ivr("flows", "validate", IVR_FLOWS_DIR=str(flows_dir),
                           IVR_SIP_CONFIG=str(flows_dir.parent / "queues.yaml"))
    assert status == 1
    assert out.splitlines() == [
        f"{flows_dir}/bad_template.yaml: steps.greet.text: invalid template "
        "'Hello {{ contact.number ': unexpected end of template, expected 'end of print "
        "statement'.",
        f"{flows_dir}/no_else.yaml: steps.pick.else: missing: a branch step needs it",
        f"{flows_dir}/no_schedule.yaml: steps.check.schedule: 'office' is not defined: add it "
        "under the flow's `schedules`",
        # Told at the file changed last, the newcomer.
        f"{flows_dir}/second_default.yaml: trigger.default: {flows_dir}/loyalty_routing.yaml "
        "is also the default voice flow: keep `default: true` on one",
        f"{flows_dir}/spin.yaml: steps.a: the loop a -> b -> a never waits for an answer "
        "(it would spin forever): put a step that waits (ask) in it",
        f"{flows_dir}/unknown_next.yaml: steps.greet.next: 'nowhere' is not a step: the steps "
        "are greet",
        # The queues come from the queues file, as the server seeds them.
        f"{flows_dir}/unknown_queue.yaml: steps.to_vip.queue: 'vip' is not a queue: the queues "
        f"are gold, platinum, sales, standard{flows_cli.QUEUE_FILE_HINT}",
        f"{flows_dir}/unreachable.yaml: steps.orphan: no step leads to it (unreachable)",
    ]
    assert f"8 problems in {flows_dir}" in err


def test_validate_exits_2_when_the_queues_file_cannot_be_read(ivr: Ivr, tmp_path: Path) -> None:
    status, out, err = ivr("flows", "validate", IVR_SIP_CONFIG=str(tmp_path / "missing.yaml"))
    assert (status, out) == (2, "")
    assert f"{tmp_path / 'missing.yaml'}: file not found" in err


def test_validate_reports_a_typo_and_the_problems_behind_it_at_once(
        ivr: Ivr, flows_dir: Path) -> None:
    """A misspelt field hid every later check of its file (where the other steps go, which
    queues they name): each fix revealed the next problem."""
    (flows_dir / "typos.yaml").write_text("""
trigger: {channels: [voice], numbers: ["+15005550196"]}
fallback_queue: standard
steps:
  greet: {kind: say, text: Hello, nxt: lookup}
  lookup: {kind: fetch, url: "http://x", next: by_teir, on_error: to_vip}
  to_vip: {kind: route, queue: vip}
""")
    status, out, _ = ivr("flows", "validate", IVR_FLOWS_DIR=str(flows_dir),
                         IVR_SIP_CONFIG=str(flows_dir.parent / "queues.yaml"))
    assert status == 1
    assert out.splitlines() == [
        f"{flows_dir}/typos.yaml: steps.greet: unknown field 'nxt': did you mean 'next'?",
        f"{flows_dir}/typos.yaml: steps.lookup.next: 'by_teir' is not a step: the steps are "
        "greet, lookup, to_vip",
        f"{flows_dir}/typos.yaml: steps.to_vip.queue: 'vip' is not a queue: the queues are "
        f"gold, platinum, sales, standard{flows_cli.QUEUE_FILE_HINT}",
    ]


def test_a_misspelt_field_does_not_hide_the_other_mistakes_of_its_step(
        ivr: Ivr, flows_dir: Path) -> None:
    """A step with a misspelt field was left out of the later checks: its misspelt `next` was
    told only once the field was fixed (a flow author's walk-through, issue 15)."""
    (flows_dir / "typos.yaml").write_text("""
trigger: {channels: [voice], numbers: ["+15005550196"]}
fallback_queue: standard
steps:
  menu:
    kind: ask
    prompt: "Press 1 for sales."
    retry_promt: "Sorry."
    expect: choice
    options: {sales: ["1"], support: ["2"]}
    save: team
    next: handvoer
    on_exhausted: handover
  handover:
    kind: branch
    value: vars.team
    cases: [{equals: sales, next: to_sales, nxt: to_sales}]
    else: to_sales
  to_sales: {kind: route, queue: slaes}
""")
    status, out, err = ivr("flows", "validate", IVR_FLOWS_DIR=str(flows_dir),
                           IVR_SIP_CONFIG=str(flows_dir.parent / "queues.yaml"))
    assert status == 1
    assert out.splitlines() == [
        f"{flows_dir}/typos.yaml: steps.menu: unknown field 'retry_promt': did you mean "
        "'retry_prompt'?",
        f"{flows_dir}/typos.yaml: steps.handover.cases.0: unknown field 'nxt': did you mean "
        "'next'?",
        f"{flows_dir}/typos.yaml: steps.menu.next: 'handvoer' is not a step: did you mean "
        "'handover'?",
        f"{flows_dir}/typos.yaml: steps.to_sales.queue: 'slaes' is not a queue: did you mean "
        f"'sales'?{flows_cli.QUEUE_FILE_HINT}",
    ]
    assert f"4 problems in {flows_dir}" in err


def test_validate_and_simulate_tell_every_name_that_would_read_as_nothing(
        flows_dir: Path) -> None:
    """Each of these loaded and sent every VIP to `else`: Jinja reads a name that holds
    nothing as nothing. A user's run names each, at its file, step and field, with the name
    meant; `ivr simulate` refuses the flow with the same lines."""
    (flows_dir / "vip.yaml").write_text(VIP_BY_SEGMENT)
    env = clean_env(IVR_FLOWS_DIR=str(flows_dir),
                    IVR_SIP_CONFIG=str(flows_dir.parent / "queues.yaml"),
                    IVR_SECRET_CRM_TOKEN="crm-token-0123")
    validated = run_ivr(flows_dir.parent, env, "flows", "validate")
    told = [
        "steps.by_segment.value: 'var' is not a name a flow can read: did you mean 'vars'?",
        "steps.by_segment.cases.1.when: steps.lokup names no step: did you mean 'lookup'?",
        "steps.lookup.headers.Authorization: secrets.crm_tokn is not set: did you mean "
        "'crm_token'? (IVR_SECRET_CRM_TOKEN is set)",
        "steps.lookup.url: settings.loyalty_url names no setting a flow can read: did you mean "
        "'loyalty_api_url'?"]
    assert validated.returncode == 1
    assert validated.stdout.splitlines() == [f"{flows_dir}/vip.yaml: {line}" for line in told]
    assert validated.stderr == f"ivr: 4 problems in {flows_dir}\n"
    simulated = run_ivr(flows_dir.parent, env, "simulate", "vip", "--from", "+15550000001")
    assert (simulated.returncode, simulated.stdout) == (1, "")
    assert simulated.stderr == validated.stdout


ADMIN = "admin-token-for-tests-0123456789"


def test_validate_with_a_server_checks_the_routes_against_its_live_queues(
        ivr: Ivr, tmp_path: Path, make_settings: Callable[..., Settings],
        start_server: Callable[[Settings], ServerThread]) -> None:
    """An admin added the billing queue on the running server: the flow routing to it is
    right there, though the queues file does not have it."""
    server = start_server(make_settings(admin_token=ADMIN))
    added = httpx.put(f"{server.url}/admin/api/queues/billing", timeout=30,
                      json={"sip_uri": "sip:billing@queues.example.com"},
                      headers={"Authorization": f"Bearer {ADMIN}"})
    assert added.status_code == 201, added.text
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "billing.yaml").write_text("""\
trigger: {channels: [voice, messaging], default: true}
fallback_queue: standard
steps:
  to_billing: {kind: route, queue: billing}
""")
    env = clean_env(IVR_FLOWS_DIR=str(draft),
                    IVR_SIP_CONFIG=str(ROOT / "sip_config" / "queues.yaml"))
    against_file = run_ivr(tmp_path, env, "flows", "validate")
    assert (against_file.returncode, against_file.stdout) == (
        1, f"{draft}/billing.yaml: steps.to_billing.queue: 'billing' is not a queue (not in "
        "IVR_SIP_CONFIG; `ivr flows validate --server URL` checks the live queues)\n")
    live = run_ivr(tmp_path, env, "flows", "validate", "--server", server.url, "--token", ADMIN)
    assert (live.returncode, live.stdout, live.stderr) == (0, "1 flow OK\n", "")

    status, out, err = ivr("flows", "validate", "--server", server.url, "--token", "wrong",
                           IVR_FLOWS_DIR=str(draft))
    assert (status, out) == (2, "")
    assert err == ("ivr: cannot check routes against the live queues: 401: a valid "
                   "`Authorization: Bearer <admin token>` header is required (check --token or "
                   "IVR_ADMIN_TOKEN)\n")


def test_validate_says_in_one_line_why_it_cannot_ask_a_server(ivr: Ivr) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    status, out, err = ivr("flows", "validate", "--server", gone, "--token", ADMIN)
    assert (status, out) == (2, "")
    assert err.startswith(f"ivr: cannot check routes against the live queues: cannot reach "
                          f"{gone}: ") and err.count("\n") == 1, err
    status, out, err = ivr("flows", "validate", "--token", ADMIN)
    assert (status, out, err) == (2, "", "ivr: --token goes with --server URL, the server whose "
                                  "live queues the routes are checked against\n")


# --- graph and schema -------------------------------------------------------------------------

def test_graph_draws_each_step_and_labels_each_exit(ivr: Ivr) -> None:
    status, out, _ = ivr("flows", "graph", "loyalty_routing")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "flowchart TD"
    for line in [
        'start(["loyalty_routing"]) --> lookup',
        'lookup["lookup (fetch)"]',
        'by_tier{"by_tier (branch)"}',
        'to_gold(["to_gold (route to gold)"])',
        "lookup -->|next| by_tier",
        "lookup -->|on_error| by_tier",
        "by_tier -->|gold| gold_ack",
        "by_tier -->|platinum| platinum_ack",
        "by_tier -->|else| standard_ack",
        "standard_ack -->|next| to_standard",
    ]:
        assert f"  {line}" in lines, line


def test_graph_labels_questions_hours_conditions_and_the_unanswered_exit(
        ivr: Ivr, tmp_path: Path) -> None:
    path = tmp_path / "menu.yaml"
    path.write_text("""
trigger: {channels: [voice]}
fallback_queue: standard
unanswered: sorry
schedules:
  office: {timezone: Europe/Paris, weekly: {mon: ["09:00-18:00"]}}
steps:
  start: {kind: hours, schedule: office, open: menu, closed: end}
  menu:
    kind: ask
    prompt: "Press 1 for sales"
    expect: choice
    options: {sales: ["1"]}
    save: team
    next: pick
    on_exhausted: end
  pick:
    kind: branch
    cases: [{when: "vars.team == 'sales' and contact.channel != \\"x\\"", next: to_sales}]
    else: menu
  to_sales: {kind: route, queue: sales}
  sorry: {kind: say, text: Sorry, next: end}
  end: {kind: end}
""")
    status, out, _ = ivr("flows", "graph", str(path))
    assert status == 0
    lines = [line.strip() for line in out.splitlines()]
    # `end` is a Mermaid keyword, and `start` is taken: the nodes get other ids.
    assert 'start_step(["menu"]) --> start' in lines
    assert 'end_step(["end (end)"])' in lines
    assert 'start{"start (hours office)"}' in lines
    for edge in ["start -->|open| menu", "start -->|closed| end_step",
                 "menu -->|next| pick", "menu -->|on_exhausted| end_step",
                 "pick -->|\"vars.team == 'sales' and contact.channel != #quot;x#quot;\"| to_sales",
                 "pick -->|else| menu", "to_sales -->|unanswered| sorry",
                 "sorry -->|next| end_step"]:
        assert edge in lines, edge


def test_graph_of_an_unknown_flow_names_the_flows_there_or_the_one_meant(ivr: Ivr) -> None:
    status, out, err = ivr("flows", "graph", "nope")
    assert (status, out) == (1, "")
    assert "'nope' is not a flow: the flows are " in err and "loyalty_routing" in err
    status, out, err = ivr("flows", "graph", "loyalty_routng")
    assert (status, out) == (1, "")
    assert err.endswith(": 'loyalty_routng' is not a flow: did you mean 'loyalty_routing'?\n")


def test_schema_is_the_json_schema_of_a_flow(ivr: Ivr) -> None:
    status, out, _ = ivr("flows", "schema")
    schema = json.loads(out)
    assert status == 0
    assert {"trigger", "fallback_queue", "steps", "schedules"} <= set(schema["properties"])
    assert {"FetchStep", "AskStep", "HoursStep"} <= set(schema["$defs"])


# --- simulate ---------------------------------------------------------------------------------

def test_simulate_prints_the_steps_variables_twiml_and_route(ivr: Ivr) -> None:
    status, out, _ = ivr("simulate", "loyalty_routing", "--channel", "voice",
                         "--from", "+15550000001", "--mock", GOLD_MOCK)
    assert status == 0
    assert out == """\
flow loyalty_routing: voice from +15550000001 to +15005550006

turn 1: call starts
  steps: lookup > by_tier > gold_ack > to_gold
  http: GET http://loyalty.invalid/customers/%2B15550000001 -> 200
  steps.lookup: {"status": 200, "outcome": "ok"}
  vars.tier = "gold"
  TwiML:
    <?xml version="1.0" ?>
    <Response>
      <Dial action="/twilio/voice/dial?queue=gold&amp;try=0">
        <Sip>sip:gold@queues.example.com</Sip>
      </Dial>
    </Response>

route: gold (sip:gold@queues.example.com)
"""


def test_a_null_from_the_api_is_said_as_nothing_not_as_none(ivr: Ivr, flows_dir: Path) -> None:
    """A fetch that saves a null (or a field the answer lacks) leaves the variable empty in
    what the caller hears, as a variable never set is (found in a flow author's walk-through:
    the caller heard "Your tier is None.")."""
    (flows_dir / "tell_tier.yaml").write_text("""\
name: tell_tier
trigger: {channels: [voice], numbers: ["+15005550199"]}
fallback_queue: standard
steps:
  lookup: {kind: fetch, url: "http://api.invalid/c/{{ contact.number | urlencode }}",
           save: {tier: loyaltyStatus, points: points}, next: tell, on_error: tell}
  tell: {kind: say, voice: "Your tier is {{ vars.tier }}, {{ vars.points }} points.", next: done}
  done: {kind: route, queue: standard}
""")
    status, out, _ = ivr("simulate", "tell_tier", "--channel", "voice", "--from", "+15550000001",
                         "--mock", 'http://api.invalid/c/%2B15550000001=200:{"loyaltyStatus": null}',
                         "--json", IVR_FLOWS_DIR=str(flows_dir),
                         IVR_SIP_CONFIG=str(flows_dir.parent / "queues.yaml"))
    assert status == 0
    [turn] = json.loads(out)["turns"]
    assert "<Say>Your tier is ,  points.</Say>" in turn["twiml"], turn["twiml"]


def test_simulate_json_is_one_document(ivr: Ivr) -> None:
    status, out, _ = ivr("simulate", "loyalty_routing", "--channel", "messaging", "--from",
                         "whatsapp:+15550000001", "--body", "Where is my order?",
                         "--mock", GOLD_MOCK, "--json")
    result = json.loads(out)
    assert status == 0
    assert result["route"] == "gold" and result["waiting_at"] is None
    assert result["trace"] == ["lookup", "by_tier", "gold_ack", "to_gold"]
    assert result["vars"] == {"tier": "gold"} and result["unmocked"] == []
    [turn] = result["turns"]
    assert turn["actions"][-1] == {"action": "route", "queue": "gold",
                                   "note": "+15550000001 (gold): Where is my order?"}
    # A WhatsApp conversation, an SMS agent: forwarded from our number as an SMS number.
    assert ('<Message from="+15005550006" to="+15550100101">+15550000001 (gold): Where is my '
            'order?</Message>') in turn["twiml"]


def test_simulate_uses_the_loyalty_api_url_setting_and_reports_unmocked_requests(
        ivr: Ivr) -> None:
    status, out, _ = ivr("simulate", "loyalty_routing", "--channel", "voice", "--from",
                         "+15550000001", IVR_LOYALTY_API_URL="https://crm.example.com/api/")
    assert status == 0
    assert ("  ! unmocked request GET https://crm.example.com/api/customers/%2B15550000001: "
            "answered as a refused connection") in out.splitlines()
    assert '  steps.lookup: {"status": null, "outcome": "connection_error"}' in out.splitlines()
    assert out.endswith("route: standard (sip:standard@queues.example.com)\n")


def test_simulate_names_a_mock_no_request_asked_for(ivr: Ivr) -> None:
    """A mock written for the default base URL while IVR_LOYALTY_API_URL points elsewhere
    would otherwise go unused without a word."""
    status, out, _ = ivr("simulate", "loyalty_routing", "--channel", "voice", "--from",
                         "+15550000001", "--mock", GOLD_MOCK, "--json")
    assert json.loads(out)["unused_mocks"] == []
    assert json.loads(out)["route"] == "gold"
    status, out, _ = ivr("simulate", "loyalty_routing", "--channel", "voice", "--from",
                         "+15550000001", "--mock", GOLD_MOCK,
                         IVR_LOYALTY_API_URL="https://crm.example.com/api/")
    assert status == 0
    assert out.splitlines()[-1].startswith(
        "! --mock GET http://loyalty.invalid/customers/%2B15550000001 was never requested")


def test_simulate_calls_the_flows_own_number_unless_told_otherwise(ivr: Ivr) -> None:
    status, out, _ = ivr("simulate", "team_choice", "--channel", "voice", "--from",
                         "+15551234567", "--json")
    assert status == 0 and json.loads(out)["to"] == "+15005550102"
    status, out, _ = ivr("simulate", "team_choice", "--channel", "voice", "--from",
                         "+15551234567", "--to", "+15005550199", "--json")
    assert json.loads(out)["to"] == "+15005550199"


def test_simulate_mocks_timeouts_and_bodies_that_are_not_json(ivr: Ivr) -> None:
    url = "http://loyalty.invalid/customers/%2B15550000001"
    for mock, outcome in [(f"{url}=timeout", "timeout"), (f"GET {url}=200:<html>", "invalid_json"),
                          (f"{url}=404:", "http_error")]:
        status, out, _ = ivr("simulate", "loyalty_routing", "--channel", "voice",
                             "--from", "+15550000001", "--mock", mock, "--json")
        result = json.loads(out)
        assert result["turns"][0]["step_results"]["lookup"]["outcome"] == outcome, mock
        assert result["route"] == "standard"


MENU = """
trigger: {channels: [voice, messaging]}
fallback_queue: standard
schedules:
  office: {timezone: America/New_York, weekly: {mon: ["09:00-17:00"]}}
steps:
  check: {kind: hours, schedule: office, open: menu, closed: closed}
  menu:
    kind: ask
    prompt: "{{ 'Welcome back. ' if contact.is_returning }}Press 1 for sales."
    retry_prompt: Sorry.
    expect: choice
    options: {sales: ["1", "sales"]}
    save: team
    save_to_contact: true
    next: to_sales
    on_exhausted: to_standard
  to_sales: {kind: route, queue: sales}
  to_standard: {kind: route, queue: standard}
  closed: {kind: say, text: "We are closed.", next: bye}
  bye: {kind: end}
"""


def test_simulate_answers_each_question_with_the_next_input(
        ivr: Ivr, flows_dir: Path) -> None:
    (flows_dir / "menu.yaml").write_text(MENU)
    status, out, _ = ivr(
        "simulate", "menu", "--channel", "voice", "--from", "+15550000001",
        "--now", "2026-11-23T15:00:00Z", "--contact", "first_seen=2026-01-01T00:00:00+00:00",
        "--input", "9", "--input", "sales", "--input", "unused",
        IVR_FLOWS_DIR=str(flows_dir), IVR_SIP_CONFIG=str(flows_dir.parent / "queues.yaml"))
    assert status == 0
    lines = out.splitlines()
    assert "turn 1: call starts" in lines and "  steps: check > menu" in lines
    assert '        <Say>Welcome back. Press 1 for sales.</Say>' in lines
    assert 'turn 2: answer "9"' in lines
    assert '  steps.menu: {"answer": "9", "valid": false}' in lines
    assert '        <Say>Sorry. Welcome back. Press 1 for sales.</Say>' in lines
    assert 'turn 3: answer "sales"' in lines and "  steps: menu > to_sales" in lines
    assert '  contact.team saved = "sales"' in lines
    assert lines[-2:] == ["route: sales (sip:sales@queues.example.com)",
                          "inputs not used (the flow had stopped waiting): ['unused']"]


def test_simulate_freezes_the_clock_and_stops_waiting_without_inputs(
        ivr: Ivr, flows_dir: Path) -> None:
    (flows_dir / "menu.yaml").write_text(MENU)
    env = {"IVR_FLOWS_DIR": str(flows_dir), "IVR_SIP_CONFIG": str(flows_dir.parent / "queues.yaml")}
    base = ("simulate", "menu", "--channel", "messaging", "--from", "+15550000001", "--json")
    _, out, _ = ivr(*base, "--now", "2026-11-23T23:00:00+00:00", **env)
    closed = json.loads(out)
    assert closed["trace"] == ["check", "closed", "bye"] and closed["route"] is None
    assert closed["turns"][0]["step_results"]["check"]["local_time"] == "2026-11-23T18:00:00-05:00"
    _, out, _ = ivr(*base, "--now", "2026-11-23T15:00:00Z", **env)
    waiting = json.loads(out)
    assert waiting["waiting_at"] == "menu" and waiting["says"] == ["Press 1 for sales."]


def test_simulate_refuses_the_flow_validate_refuses_with_the_same_lines(
        ivr: Ivr, flows_dir: Path) -> None:
    """A route to a misspelt queue was simulated as the fallback queue's, after saying
    "Connecting you to sales.", with no warning and exit 0; a misspelt fallback queue was not
    told either. The flow is checked against the queues `ivr flows validate` uses."""
    (flows_dir / "menu.yaml").write_text(
        MENU.replace("queue: sales", "queue: slaes")
        .replace("fallback_queue: standard", "fallback_queue: standrd")
        .replace("channels: [voice, messaging]", 'channels: [voice], numbers: ["+15005550199"]'))
    env = {"IVR_FLOWS_DIR": str(flows_dir), "IVR_SIP_CONFIG": str(flows_dir.parent / "queues.yaml")}
    _, told, _ = ivr("flows", "validate", **env)
    assert told.splitlines() == [
        f"{flows_dir}/menu.yaml: fallback_queue: 'standrd' is not a queue: did you mean "
        f"'standard'?{flows_cli.QUEUE_FILE_HINT}",
        f"{flows_dir}/menu.yaml: steps.to_sales.queue: 'slaes' is not a queue: did you mean "
        f"'sales'?{flows_cli.QUEUE_FILE_HINT}"]
    status, out, err = ivr("simulate", "menu", "--channel", "voice", "--from", "+15550000001",
                           "--now", "2026-11-23T15:00:00Z", "--input", "1", **env)
    assert (status, out, err) == (1, "", told)


def test_simulate_refuses_a_number_twilio_never_sends_as_ivr_call_does(ivr: Ivr) -> None:
    """`ivr simulate --from 5551234567` looked the caller up as `/customers/5551234567`, and the
    mock for %2B15551234567 was "never requested"."""
    for options, refusal in [
        (["--from", "5551234567"], "ivr: the caller (--from) '5551234567' is not a number as "
         "Twilio sends it: write it in E.164, + and the country code: +15551234567 for a US or "
         "Canadian number"),
        (["--from", "+15551234567", "--to", "+1 500 555 0006"], "ivr: the number called (--to) "
         "'+1 500 555 0006' is not a number as Twilio sends it: write it without spaces or "
         "punctuation: +15005550006"),
        (["--channel", "messaging", "--from", "client:alice"], "ivr: the caller (--from) "
         "'client:alice' is not a number as Twilio sends it: write it in E.164, + and the "
         "country code, e.g. +15551234567"),
        (["--channel", "voice", "--from", "whatsapp:+15551234567"], "ivr: the caller (--from) "
         "'whatsapp:+15551234567' is on WhatsApp, which is messaging: give --channel messaging "
         "(or no --channel)"),
        (["--from", "whatsapp:5551234567"], "ivr: the caller (--from) '5551234567' is not a "
         "number as Twilio sends it: write it in E.164, + and the country code: +15551234567 "
         "for a US or Canadian number"),
    ]:
        with pytest.raises(SystemExit) as refused:
            ivr("simulate", "loyalty_routing", *options, "--mock", GOLD_MOCK)
        assert str(refused.value.code) == refusal
    # What Twilio sends is taken: a Voice SDK client calls, a WhatsApp sender writes.
    status, out, _ = ivr("simulate", "loyalty_routing", "--channel", "voice",
                         "--from", "client:alice", "--json")
    assert status == 0 and json.loads(out)["from"] == "client:alice"


def test_simulate_runs_on_the_channel_the_contact_and_the_flow_imply(ivr: Ivr) -> None:
    """`ivr simulate` required --channel where `ivr call` takes voice."""
    def channel(flow: str, sender: str = "+15550000001") -> str:
        status, out, _ = ivr("simulate", flow, "--from", sender, "--json")
        assert status == 0
        return str(json.loads(out)["channel"])

    assert channel("team_choice") == "voice"  # both channels: a call, as `ivr call`
    assert channel("vip_by_email") == "messaging"  # its only channel
    assert channel("team_choice", "whatsapp:+15550000001") == "messaging"
    commands = argparse.ArgumentParser(prog="ivr").add_subparsers()
    flows_cli.add_commands(commands)
    told = " ".join(commands.choices["simulate"].format_help().split())
    assert ("--channel {voice,messaging} default: messaging for a whatsapp: sender, else the "
            "flow's only channel, else voice") in told


@pytest.mark.parametrize("option", [["--mock", "http://x.test/a"], ["--mock", "http://x.test=9:{}"],
                                    ["--now", "2026-11-23T10:00:00"], ["--contact", "email"]])
def test_simulate_refuses_malformed_options(ivr: Ivr, option: list[str]) -> None:
    status, out, err = ivr("simulate", "loyalty_routing", "--channel", "voice",
                           "--from", "+15550000001", *option)
    assert (status, out) == (2, "")
    assert err.startswith(f"ivr: {option[0]} ")
