"""`ivr flows validate | graph | schema` and `ivr simulate`: the tools to trust a flow before it
takes a call. They read IVR_FLOWS_DIR and IVR_SIP_CONFIG as the server does, and run offline
(but `ivr flows validate --server`, which asks a running server for its live queues)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.dom import minidom

from ivr.addresses import twilio_address
from ivr.admin.client import TOKEN_HELP, AdminError, admin_client
from ivr.flow_versions_cli import add_version_commands
from ivr.flows.loader import CHANNELS, FlowLoadError, load_flow_file, load_flows
from ivr.flows.model import Flow
from ivr.flows.step import Channel, Step
from ivr.queues import Queue, QueueConfigError, load_queue_file
from ivr.settings import Settings
from ivr.simulator import (
    DEFAULT_TO_NUMBER,
    REFUSED,
    TIMEOUT,
    MockError,
    Simulation,
    Turn,
    simulate,
)
from ivr.validation import unknown

# Where `--mock` keys point when IVR_LOYALTY_API_URL is unset: a name that never resolves, so a
# simulation cannot reach a real service by accident.
UNSET_LOYALTY_API_URL = "http://loyalty.invalid"
WHATSAPP = "whatsapp:"
QUEUE_FILE_HINT = (" (not in IVR_SIP_CONFIG; `ivr flows validate --server URL` checks the live "
                   "queues)")
_NOT_A_QUEUE = re.compile(r"""(?:^|: )(?:'[^']*'|"[^"]*") is not a queue(?::|$)""")  # unknown()
_MOCK = re.compile(r"(?P<key>.+?)=(?:(?P<status>[1-5][0-9]{2}):(?P<content>.*)|(?P<failure>"
                   rf"{TIMEOUT}|{REFUSED}))", re.DOTALL)


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `flows` (validate, graph, schema; publish, versions, diff, rollback) and
    `simulate` on the `ivr` command."""
    flows = commands.add_parser("flows", help="check, draw and describe flows; publish them, "
                                "see their versions, roll them back")
    actions = flows.add_subparsers(dest="flows_command", required=True)
    validate = actions.add_parser(
        "validate", help="check every flow in IVR_FLOWS_DIR against the queues in IVR_SIP_CONFIG "
        "(or those live on a server: --server)")
    validate.add_argument("--server", metavar="URL",
                          help="check the routes against the live queues of this running "
                          "server (its admin API) instead of IVR_SIP_CONFIG")
    validate.add_argument("--token", help=TOKEN_HELP)
    validate.set_defaults(handler=validate_command)
    graph = actions.add_parser("graph", help="print a flow as a Mermaid flowchart")
    graph.add_argument("flow", metavar="FLOW", help="a flow name in IVR_FLOWS_DIR, or a file")
    graph.set_defaults(handler=graph_command)
    schema = actions.add_parser("schema", help="print the JSON Schema of flow files")
    schema.set_defaults(handler=schema_command)
    add_version_commands(actions)

    sim = commands.add_parser(
        "simulate", help="run a flow offline, turn by turn, with HTTP answered from mocks",
        description="Run a flow offline as the server would: each turn's steps, the variables "
        "they set and the TwiML. Flows see settings.loyalty_api_url as the server does "
        f"(IVR_LOYALTY_API_URL, or {UNSET_LOYALTY_API_URL} when unset); a secret set with "
        "IVR_SECRET_<NAME> is never read: requests show it, and mocks name it, as "
        "[secret NAME].")
    sim.add_argument("flow", metavar="FLOW", help="a flow name in IVR_FLOWS_DIR, or a file")
    sim.add_argument("--channel", choices=CHANNELS,
                     help="default: messaging for a whatsapp: sender, else the flow's only "
                     "channel, else voice")
    sim.add_argument("--from", dest="from_number", required=True, metavar="NUMBER",
                     help="the contact, as Twilio sends it: +15551234567 (E.164), "
                     "whatsapp:+15551234567, or on voice client:NAME or a sip: address")
    sim.add_argument("--to", dest="to_number", metavar="NUMBER",
                     help="the number called or written to (default: the flow's first trigger "
                     f"number, else {DEFAULT_TO_NUMBER})")
    sim.add_argument("--body", help="messaging: the first message (params.Body)")
    sim.add_argument("--input", dest="inputs", action="append", default=[], metavar="TEXT",
                     help="an answer, given while the flow waits (repeatable, in order)")
    sim.add_argument("--mock", dest="mocks", action="append", default=[],
                     metavar="URL=STATUS:JSON",
                     help="answer a request: [METHOD ]URL=STATUS:JSON (a body that is not JSON "
                     f"is sent as text), or URL={TIMEOUT} / URL={REFUSED} (repeatable); "
                     "an unmocked request is refused")
    sim.add_argument("--now", help="freeze the clock, ISO 8601 with a zone, e.g. "
                     "2026-11-23T10:00:00+01:00")
    sim.add_argument("--contact", dest="memory", action="append", default=[],
                     metavar="FIELD=VALUE", help="contact memory, e.g. email=jane@example.com "
                     "or first_seen=2026-01-01T00:00:00+00:00 (repeatable)")
    sim.add_argument("--json", action="store_true", help="print one JSON document")
    sim.set_defaults(handler=simulate_command)


# --- validate ---------------------------------------------------------------------------------

def validate_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.token and not args.server:
        print("ivr: --token goes with --server URL, the server whose live queues the routes "
              "are checked against", file=sys.stderr)
        return 2
    queues = _live_queues_or_report(args, settings) if args.server else _queues_or_report(settings)
    if queues is None:
        return 2
    try:
        flow_set = load_flows(settings.flows_dir, queue_names=queues, secrets=settings.secrets,
                              settings=settings.flow_settings())
    except FlowLoadError as exc:
        problems = exc.problems if args.server else _with_queue_file_hints(exc.problems)
        for problem in problems:
            print(problem)
        count = len(problems)
        print(f"ivr: {count} problem{'s' if count != 1 else ''} in {settings.flows_dir}",
              file=sys.stderr)
        return 1
    count = len(flow_set.flows)
    print(f"{count} flow{'s' if count != 1 else ''} OK")
    return 0


def _with_queue_file_hints(problems: list[str]) -> list[str]:
    """The problems' lines, a route to an unknown queue saying where the queues came from: a
    queue made in the admin page since is live, yet not in IVR_SIP_CONFIG."""
    return [problem + QUEUE_FILE_HINT if _NOT_A_QUEUE.search(problem) else problem
            for problem in problems]


# --- graph ------------------------------------------------------------------------------------

def graph_command(args: argparse.Namespace, settings: Settings) -> int:
    flow = _flow_or_report(args.flow, settings)
    if flow is None:
        return 1
    print(mermaid(flow))
    return 0


# Words Mermaid reads as syntax: a step named `end` would close the chart.
_MERMAID_WORDS = {"end", "graph", "flowchart", "subgraph", "style", "class", "classdef", "click",
                  "linkstyle", "direction", "default"}
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_ .,:+@\-]*")
# A node as Mermaid draws each shape a kind declares: a decision, where a contact leaves the flow.
_SHAPES = {"action": '["{label}"]', "decision": '{{"{label}"}}', "exit": '(["{label}"])'}


def mermaid(flow: Flow) -> str:
    """The flow as a Mermaid `flowchart TD`: a node per step (id and kind), an edge per exit."""
    ids = _node_ids(list(flow.steps))
    entry = _unique_node("start", set(ids.values()))  # the flow's own node, before its first step
    lines = ["flowchart TD", f"  %% {flow.name}: fallback queue {flow.fallback_queue}",
             f'  {entry}(["{_escape(flow.name)}"]) --> {ids[flow.start_step]}']
    edges: list[str] = []
    for step_id, step in flow.steps.items():
        node = ids[step_id]
        kind = _kind(step)
        label = _escape(f"{step_id} ({kind}{step.graph_detail()})")
        lines.append(f"  {node}{_SHAPES[step.shape].format(label=label)}")
        for exit_label, target in _exits(flow, step):
            edges.append(f"  {node} -->|{_edge_label(exit_label)}| {ids[target]}")
    return "\n".join(lines + edges)


def _exits(flow: Flow, step: Step) -> list[tuple[str, str]]:
    exits = step.labelled_exits()
    if step.hands_off and flow.unanswered is not None:
        exits.append(("unanswered", flow.unanswered))  # voice: every SIP target failed
    return exits


def _kind(step: Step) -> str:
    return step.kind  # type: ignore[attr-defined,no-any-return]  (each kind declares it)


def _node_ids(step_ids: list[str]) -> dict[str, str]:
    """Mermaid node ids: the step id where Mermaid allows it, else a unique variant."""
    ids: dict[str, str] = {}
    for step_id in step_ids:
        ids[step_id] = _unique_node(step_id, set(ids.values()))
    return ids


def _unique_node(name: str, used: set[str]) -> str:
    node = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if node.lower() in _MERMAID_WORDS or node in used:
        node = f"{node}_step"
    candidate, suffix = node, 2
    while candidate in used:
        candidate, suffix = f"{node}{suffix}", suffix + 1
    return candidate


def _escape(text: str) -> str:
    return (text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;")
            .replace(">", "#gt;").replace("|", "#124;"))


def _edge_label(text: str) -> str:
    return text if _PLAIN_LABEL.fullmatch(text) else f'"{_escape(text)}"'


# --- schema -----------------------------------------------------------------------------------

def schema_command(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(Flow.model_json_schema(), indent=2))
    return 0


# --- simulate ---------------------------------------------------------------------------------

def simulate_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        mocks = parse_mocks(args.mocks)
        memory = _pairs(args.memory, "--contact")
        now = _aware_time(args.now) if args.now else None
    except ValueError as exc:
        print(f"ivr: {exc}", file=sys.stderr)
        return 2
    queues = _queues_or_report(settings)
    if queues is None:
        return 2
    # The flow is checked as `ivr flows validate` checks it: a route to a misspelt queue would
    # otherwise be simulated as the fallback queue, silently.
    flow = _flow_or_report(args.flow, settings, queues=queues)
    if flow is None:
        return 1
    channel = args.channel or _default_channel(flow, args.from_number)
    if channel not in flow.trigger.channels:
        print(f"ivr: note: flow {flow.name} is not triggered on {channel}; simulating anyway",
              file=sys.stderr)
    from_number = _simulated_address(args.from_number, "caller (--from)", channel)
    to_number = _simulated_address(
        args.to_number or next(iter(flow.trigger.numbers), DEFAULT_TO_NUMBER),
        "number called (--to)", channel)
    try:
        simulation = asyncio.run(simulate(
            flow, channel, from_number, to_number, queues=queues, body=args.body,
            inputs=args.inputs, mocks=mocks, now=now, memory=memory,
            settings=flow_settings(settings), secrets=settings.secrets,
            deadline=settings.decision_deadline))
    except MockError as exc:
        print(f"ivr: {exc}", file=sys.stderr)
        return 2
    print(simulation.to_json() if args.json else describe(simulation, queues))
    return 0


def _default_channel(flow: Flow, from_number: str) -> Channel:
    """The channel of a simulation given none: a WhatsApp sender writes, and a flow that serves
    one channel is run on it; else a call."""
    if from_number.lower().startswith(WHATSAPP):
        return "messaging"
    channels = flow.trigger.channels
    return channels[0] if len(channels) == 1 else "voice"


def _simulated_address(value: str, role: str, channel: Channel) -> str:
    """`value` as Twilio sends it (see `twilio_address`), with a `whatsapp:` prefix on
    messaging; or SystemExit saying how to write it."""
    if value.lower().startswith(WHATSAPP):
        if channel != "messaging":
            raise SystemExit(f"ivr: the {role} {value!r} is on WhatsApp, which is messaging: "
                             "give --channel messaging (or no --channel)")
        return WHATSAPP + twilio_address(value[len(WHATSAPP):], role, channel)
    return twilio_address(value, role, channel)


def flow_settings(settings: Settings) -> dict[str, Any]:
    """What flows read as `settings.*`, as the server passes it, with UNSET_LOYALTY_API_URL for
    an unset IVR_LOYALTY_API_URL."""
    readable = settings.flow_settings()
    readable["loyalty_api_url"] = readable["loyalty_api_url"] or UNSET_LOYALTY_API_URL
    return readable


def parse_mocks(specs: list[str]) -> dict[str, Any]:
    """`[METHOD ]URL=STATUS:JSON`, `URL=STATUS:text`, `URL=timeout`, `URL=refused` as the
    simulator's mocks."""
    mocks: dict[str, Any] = {}
    for spec in specs:
        match = _MOCK.fullmatch(spec.strip())
        if match is None:
            raise ValueError(f"--mock {spec!r}: expected URL=STATUS:JSON, URL={TIMEOUT} or "
                             f"URL={REFUSED}, e.g. 'http://loyalty.invalid/customers/"
                             "%2B15551234567=200:{\"loyaltyStatus\": \"gold\"}'")
        if match["failure"]:
            mocks[match["key"]] = match["failure"]
            continue
        content = match["content"]
        try:
            mocks[match["key"]] = {"status": int(match["status"]), "json": json.loads(content)}
        except ValueError:  # not JSON: the API answers text, as a misbehaving one might
            mocks[match["key"]] = {"status": int(match["status"]), "body": content}
    return mocks


def _pairs(specs: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{option} {spec!r}: expected FIELD=VALUE")
        pairs[name.strip()] = value
    return pairs


def _aware_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--now {text!r}: not an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise ValueError(f"--now {text!r}: give a zone, e.g. {text}+00:00 or {text}Z")
    return moment


def describe(simulation: Simulation, queues: dict[str, Queue]) -> str:
    """The simulation as a person reads it: each turn's steps, variables and TwiML, then the end."""
    lines = [f"flow {simulation.flow}: {simulation.channel} from {simulation.from_number} to "
             f"{simulation.to_number}"]
    for turn in simulation.turns:
        lines += ["", _turn_heading(turn, simulation.channel)]
        lines.append(f"  steps: {' > '.join(turn.steps) or '(none)'}")
        for request in turn.requests:
            lines.append(f"  http: {request['method']} {request['url']} -> {request['answer']}")
        for step_id, result in turn.step_results.items():
            shown = {k: v for k, v in result.items() if k != "elapsed_ms"}
            lines.append(f"  steps.{step_id}: {json.dumps(shown, default=str)}")
        for name, value in turn.vars.items():
            lines.append(f"  vars.{name} = {json.dumps(value, default=str)}")
        for name, value in turn.saved.items():
            lines.append(f"  contact.{name} saved = {json.dumps(value)}")
        lines += [f"  ! {note}" for note in turn.notes]
        lines.append("  TwiML:")
        pretty = minidom.parseString(turn.twiml).toprettyxml(indent="  ").strip()
        lines += [f"    {line}" for line in pretty.splitlines()]
    lines.append("")
    if simulation.route is not None:
        queue = queues.get(simulation.route)
        target = f" ({queue.sip_uri if simulation.channel == 'voice' else queue.message_to})" \
            if queue is not None else ""
        lines.append(f"route: {simulation.route}{target}")
    elif simulation.waiting_at is not None:
        lines.append(f"waiting at {simulation.waiting_at}: give another --input to answer")
    else:
        lines.append("route: none (the flow ended)")
    if simulation.unused_inputs:
        lines.append(f"inputs not used (the flow had stopped waiting): {simulation.unused_inputs}")
    for mock in simulation.unused_mocks:
        lines.append(f"! --mock {mock} was never requested: the flow's requests are the `http:` "
                     "lines above (settings.loyalty_api_url is IVR_LOYALTY_API_URL, or "
                     f"{UNSET_LOYALTY_API_URL} when unset; a secret is [secret NAME])")
    return "\n".join(lines)


def _turn_heading(turn: Turn, channel: str) -> str:
    if turn.number == 1:
        start = "call starts" if channel == "voice" else f"message {json.dumps(turn.input or '')}"
        return f"turn 1: {start}"
    return f"turn {turn.number}: answer {json.dumps(turn.input)}"


# --- finding a flow ---------------------------------------------------------------------------

def _queues_or_report(settings: Settings) -> dict[str, Queue] | None:
    """The queues of IVR_SIP_CONFIG, which flows are checked against; None (said on stderr)
    when the file is unusable."""
    try:
        return load_queue_file(settings.sip_config).queues
    except QueueConfigError as exc:
        print(f"ivr: cannot check routes, the queues file is unusable:\n{exc}", file=sys.stderr)
        return None


def _live_queues_or_report(args: argparse.Namespace, settings: Settings) -> list[str] | None:
    """The names of the queues live on the server `--server`, which flows are checked against;
    None (said on stderr) when it cannot be asked."""
    try:
        with contextlib.closing(admin_client(args.server, args.token, settings)) as client:
            return [queue["name"] for queue in client.queues()]
    except AdminError as exc:
        print(f"ivr: cannot check routes against the live queues: {exc}", file=sys.stderr)
        return None


def _flow_or_report(name_or_path: str, settings: Settings,
                    queues: Collection[str] | None = None) -> Flow | None:
    """The flow, or None (its problems said on stderr); with `queues`, checked as
    `ivr flows validate` checks it: its routes against them, the secrets and settings it reads
    against those of `settings`."""
    try:
        if queues is None:
            return find_flow(name_or_path, settings.flows_dir)
        return find_flow(name_or_path, settings.flows_dir, queues, settings.secrets,
                         settings.flow_settings())
    except FlowLoadError as exc:
        for problem in exc.problems if queues is None else _with_queue_file_hints(exc.problems):
            print(problem, file=sys.stderr)
        return None


def find_flow(name_or_path: str, flows_dir: Path, queues: Collection[str] | None = None,
              secrets: Collection[str] | None = None,
              settings: Collection[str] | None = None) -> Flow:
    """A flow file given by path, or the flow of that name (file stem or `name:`) in
    `flows_dir`, checked as `load_flows` checks each file (against `queues`, the names of the
    `secrets` set and of the `settings` a flow can read, when given). Only that file is loaded,
    so a broken neighbour does not hide it."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_flow_file(path, queues, secrets, settings)
    paths = sorted([*flows_dir.glob("*.yaml"), *flows_dir.glob("*.yml")])
    for candidate in paths:
        if candidate.stem == name_or_path:
            return load_flow_file(candidate, queues, secrets, settings)
    for candidate in paths:  # a file may name its flow differently from the file
        try:
            flow = load_flow_file(candidate, queues, secrets, settings)
        except FlowLoadError:
            continue
        if flow.name == name_or_path:
            return flow
    known = [path.stem for path in paths]
    raise FlowLoadError([f"{flows_dir}: {unknown('a flow', name_or_path, known, 'flows')}"])
