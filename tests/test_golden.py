"""Golden cases: every tests/golden/*.yaml runs a shipped flow through the simulator and pins the
steps, the route and what was said. Adding a case is adding a file; no Python.

    description: a gold caller is dialled to the gold queue
    flow: loyalty_routing            # flow name in the repo's flows/
    channel: voice                   # or messaging
    from: "+15550000001"
    to: "+15005550006"               # optional
    body: "Hi"                       # optional, messaging's first message
    now: "2026-11-23T10:00:00Z"      # optional frozen clock
    contact: {email: jane@example.com}                     # optional contact memory
    settings: {loyalty_api_url: "http://loyalty.test"}     # optional; this is the default
    mocks:            # "[METHOD ]URL": {status, json}, {status, body}, timeout or refused
      "GET http://loyalty.test/customers/%2B15550000001": {status: 200, json: {loyaltyStatus: gold}}
    inputs: ["1"]                    # answers, in order
    expect:
      trace: [lookup, by_tier, gold_ack, to_gold]   # every step across turns (exact)
      route: gold                    # queue routed to, or null
      waiting_at: null               # optional
      says: ["..."]                  # optional: texts said and asked, in order (exact)
      vars: {tier: gold}             # optional: some variables at the end (unset: null)
      saved: {email: jane@example.com}   # optional: the contact fields saved (exact)

A request no mock answers fails the case: mock it, with `refused` to test a refused connection.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from ivr.flows.loader import FlowSet, load_flows
from ivr.queues import Queue, load_queue_file
from ivr.simulator import DEFAULT_TO_NUMBER, Simulation, simulate
from ivr.yamlfile import read_yaml

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((Path(__file__).parent / "golden").glob("*.yaml"))
DEFAULT_SETTINGS: dict[str, Any] = {"loyalty_api_url": "http://loyalty.test",
                                    "loyalty_api_token": None}


def _text(value: Any) -> Any:
    """YAML reads `1` as a number and an unquoted time as a datetime; cases mean the text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_text)]


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trace: list[str]
    route: str | None
    waiting_at: str | None = None
    says: list[str] | None = None
    vars: dict[str, Any] | None = None
    saved: dict[str, Text] | None = None


class GoldenCase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    description: str
    flow: str
    channel: Literal["voice", "messaging"]
    from_number: Text = Field(alias="from")
    to_number: Text = Field(default=DEFAULT_TO_NUMBER, alias="to")
    body: Text | None = None
    now: AwareDatetime | None = None
    contact: dict[str, Text] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    mocks: dict[str, Any] = Field(default_factory=dict)
    inputs: list[Text] = Field(default_factory=list)
    expect: Expectation


@cache
def shipped() -> tuple[FlowSet, dict[str, Queue]]:
    """The repo's flows, checked against its queues file as `ivr flows validate` does."""
    queues = dict(load_queue_file(ROOT / "sip_config" / "queues.yaml").queues)
    return load_flows(ROOT / "flows", queue_names=queues), queues


def run_case(case: GoldenCase) -> Simulation:
    flows, queues = shipped()
    assert case.flow in flows.flows, f"no flow {case.flow!r} in flows/ ({', '.join(flows.flows)})"
    return asyncio.run(simulate(
        flows.flows[case.flow], case.channel, case.from_number, case.to_number, queues=queues,
        body=case.body, inputs=case.inputs, mocks=case.mocks, now=case.now, memory=case.contact,
        settings={**DEFAULT_SETTINGS, **case.settings}))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path: Path) -> None:
    case = GoldenCase.model_validate(read_yaml(path))
    simulation = run_case(case)
    expect = case.expect
    about = f"{path.name}: {case.description}"

    assert not simulation.unmocked, (
        f"{about}: requests without a mock: {simulation.unmocked} (mock each; use `refused` to "
        "test a refused connection)")
    assert simulation.trace == expect.trace, about
    assert simulation.route == expect.route, about
    if "waiting_at" in expect.model_fields_set:
        assert simulation.waiting_at == expect.waiting_at, about
    if expect.says is not None:
        assert simulation.says == expect.says, about
    if expect.vars is not None:
        # An unset variable reads as null, as it does in templates.
        subset = {name: simulation.vars.get(name) for name in expect.vars}
        assert subset == expect.vars, about
    if expect.saved is not None:
        assert simulation.saved_fields == expect.saved, about
    # The load checks what templates read against what each kind says it sets and records.
    flow = shipped()[0].flows[case.flow]
    assert set(simulation.vars) <= frozenset().union(
        *(step.vars_set() for step in flow.steps.values())), about
    for turn in simulation.turns:
        for step_id, recorded in turn.step_results.items():
            assert set(recorded) <= set(flow.steps[step_id].records), (about, step_id)


def test_there_are_golden_cases_for_the_reference_flow() -> None:
    assert len([p for p in CASES if p.name.startswith("loyalty_")]) >= 7
