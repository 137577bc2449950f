"""Loading flows: the shipped flows load; every broken flow is refused with a precise message.

Each file in tests/broken_flows/ pins the start of its one message in its first line:
`# error: <text>`, the message after the file's name.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from ivr.flows.loader import FlowLoadError, load_flows
from ivr.queues import load_queue_file

ROOT = Path(__file__).resolve().parent.parent
BROKEN = sorted((Path(__file__).parent / "broken_flows").glob("*.yaml"))
QUEUES = {"gold", "platinum", "standard"}
# What flows can read as `settings.*` (Settings.flow_settings()).
FLOW_SETTINGS = {"loyalty_api_url", "loyalty_api_token"}


def test_the_shipped_flows_load_against_the_shipped_queues() -> None:
    shipped = load_queue_file(ROOT / "sip_config" / "queues.yaml").queues
    # With no secret set, as on a fresh machine: the quick start needs no set-up.
    flows = load_flows(ROOT / "flows", queue_names=shipped, secrets=())
    reference = flows.flows["loyalty_routing"]
    assert flows.select("voice", "+15550001111") is reference
    assert flows.select("messaging", "+15550001111") is reference
    assert reference.routed_queues() == QUEUES


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_a_broken_flow_is_refused_naming_the_file_the_step_and_the_problem(
    path: Path, tmp_path: Path
) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# error: ")
    shutil.copy(path, tmp_path / path.name)
    with pytest.raises(FlowLoadError) as error:
        # No secret set; the settings a server offers flows.
        load_flows(tmp_path, queue_names=QUEUES, secrets=(), settings=FLOW_SETTINGS)
    assert len(error.value.problems) == 1, error.value.problems
    problem = error.value.problems[0]
    assert problem.startswith(f"{tmp_path / path.name}: ")
    assert problem.removeprefix(f"{tmp_path / path.name}: ").startswith(expected), problem


def test_every_broken_file_is_reported_at_once(tmp_path: Path) -> None:
    for path in BROKEN[:3]:
        shutil.copy(path, tmp_path / path.name)
    with pytest.raises(FlowLoadError) as error:
        load_flows(tmp_path, queue_names=QUEUES)
    for path in BROKEN[:3]:
        expected = path.read_text().splitlines()[0].removeprefix("# error: ")
        assert any(problem.startswith(f"{tmp_path / path.name}: {expected}")
                   for problem in error.value.problems), (path.name, error.value.problems)


FLOW = """
trigger: {{channels: [{channels}], numbers: [{numbers}], default: {default}}}
fallback_queue: standard
steps:
  to_standard: {{kind: route, queue: standard}}
"""


def write_flow(directory: Path, name: str, channels: str = "voice", numbers: str = "",
               default: str = "false") -> None:
    text = FLOW.format(channels=channels, numbers=numbers, default=default)
    (directory / f"{name}.yaml").write_text(text)


def changed(directory: Path, *names_oldest_first: str) -> None:
    """Give the files mtimes in this order, an hour apart."""
    for hours_ago, name in zip(range(len(names_oldest_first), 0, -1), names_oldest_first,
                               strict=True):
        moment = 1_800_000_000 - hours_ago * 3600
        os.utime(directory / f"{name}.yaml", (moment, moment))


def test_two_default_flows_for_one_channel_are_refused_at_the_file_changed_last(
        tmp_path: Path) -> None:
    """The conflict was told at the file that sorts last, naming the other: a new `a.yaml`
    beside the shipped `b.yaml` blamed `b.yaml`, the file that was there first."""
    write_flow(tmp_path, "a", channels="voice, messaging", default="true")
    write_flow(tmp_path, "b", channels="messaging", default="true")
    for oldest, newest in (("b", "a"), ("a", "b")):
        changed(tmp_path, oldest, newest)
        with pytest.raises(FlowLoadError) as refused:
            load_flows(tmp_path, queue_names=QUEUES)
        assert refused.value.problems == [
            f"{tmp_path / f'{newest}.yaml'}: trigger.default: {tmp_path / f'{oldest}.yaml'} is "
            "also the default messaging flow: keep `default: true` on one"]


def test_one_number_bound_twice_on_a_channel_is_refused_at_the_file_changed_last(
        tmp_path: Path) -> None:
    write_flow(tmp_path, "a", numbers="'+15550100002', '+15550100001'")
    write_flow(tmp_path, "b", numbers="'+15550100001'")
    write_flow(tmp_path, "c", numbers="'+15550100001'")
    for oldest, middle, newest in (("b", "c", "a"), ("a", "b", "c")):
        changed(tmp_path, oldest, middle, newest)
        with pytest.raises(FlowLoadError) as refused:
            load_flows(tmp_path, queue_names=QUEUES)
        others = sorted([oldest, middle])
        assert refused.value.problems == [
            f"{tmp_path / f'{newest}.yaml'}: trigger.numbers: voice +15550100001 is also served "
            f"by {tmp_path / f'{others[0]}.yaml'} and {tmp_path / f'{others[1]}.yaml'}: a number "
            "belongs to one flow per channel; remove it from one"]


def test_a_number_bound_flow_wins_over_the_default(tmp_path: Path) -> None:
    write_flow(tmp_path, "main", channels="voice, messaging", default="true")
    write_flow(tmp_path, "hotline", channels="voice", numbers="'+15550100001'")
    flows = load_flows(tmp_path, queue_names=QUEUES)
    assert flows.select("voice", "+15550100001").name == "hotline"
    assert flows.select("voice", "+15550100009").name == "main"
    assert flows.select("messaging", "+15550100001").name == "main"


def test_a_channel_without_a_default_flow_selects_nothing(tmp_path: Path) -> None:
    write_flow(tmp_path, "voice_only", default="true")
    assert load_flows(tmp_path, queue_names=QUEUES).select("messaging", "+15550100001") is None


def test_an_empty_flows_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlowLoadError, match="no flow files"):
        load_flows(tmp_path)


def test_two_files_with_one_flow_name_are_refused(tmp_path: Path) -> None:
    write_flow(tmp_path, "a", numbers="'+15550100001'")
    write_flow(tmp_path, "b", numbers="'+15550100002'")
    (tmp_path / "b.yaml").write_text("name: a\n" + (tmp_path / "b.yaml").read_text())
    changed(tmp_path, "a", "b")
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, queue_names=QUEUES)
    assert refused.value.problems == [
        f"{tmp_path / 'b.yaml'}: name: the flow name 'a' is also used by {tmp_path / 'a.yaml'}: "
        "give one of them another `name` (or file name)"]


def test_every_graph_problem_of_a_flow_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "many.yaml").write_text("""
trigger: {channels: [voice], default: true}
fallback_queue: standard
start: begin
steps:
  greet: {kind: say, text: Hi, next: nowhere}
  ask: {kind: ask, prompt: Hi, next: elsewhere, on_exhausted: greet}
""")
    with pytest.raises(FlowLoadError) as error:
        load_flows(tmp_path, queue_names=QUEUES)
    assert [p.split(": ", 1)[1] for p in error.value.problems] == [
        "start: 'begin' is not a step: the steps are ask, greet",
        "steps.greet.next: 'nowhere' is not a step: the steps are ask, greet",
        "steps.ask.next: 'elsewhere' is not a step: the steps are ask, greet",
    ]


def test_yes_and_no_read_as_booleans_are_named_with_the_fix(tmp_path: Path) -> None:
    """`options: {yes: ..., no: ...}` and `equals: yes` were refused as "options.1.[key]: Input
    should be a valid string" (a flow author's walk-through): YAML 1.1 reads yes and no
    unquoted as booleans, and the message now says so."""
    (tmp_path / "yesno.yaml").write_text("""\
name: yesno
trigger: {channels: [voice], numbers: ["+15005550177"]}
fallback_queue: standard
steps:
  q: {kind: ask, prompt: "Yes or no?", expect: choice, options: {yes: ["1"], no: ["2"]},
      save: answer, next: b, on_exhausted: done}
  b: {kind: branch, value: vars.answer, cases: [{equals: yes, next: done}], else: done}
  done: {kind: route, queue: standard}
""")
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, queue_names=QUEUES)
    problems = [p.removeprefix(f"{tmp_path / 'yesno.yaml'}: ") for p in refused.value.problems]
    hint = "YAML reads yes, no, on and off unquoted as true or false; quote them"
    assert f"steps.q.options: a key that YAML read as true: {hint}" in problems
    assert f"steps.q.options: a key that YAML read as false: {hint}" in problems
    assert f"steps.b.cases.0.equals: expected text, got true: {hint}" in problems


def test_a_flow_without_its_optional_secret_loads_and_says_so_at_the_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shipped vip_by_email does without its CRM token: its requests then go without one,
    which an API that needs it refuses; the start says so, naming what to set."""
    with caplog.at_level(logging.WARNING, logger="ivr"):
        load_flows(ROOT / "flows", queue_names=None, secrets=())
    assert ("flow vip_by_email: secrets.crm_token is not set (declared optional): its requests "
            "go without it; set IVR_SECRET_CRM_TOKEN if the API needs it") in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ivr"):
        load_flows(ROOT / "flows", queue_names=None, secrets=("crm_token",))
    assert not [m for m in caplog.messages if "secrets." in m]


def test_templates_read_any_parameter_what_steps_set_and_record_and_their_own_names(
        tmp_path: Path) -> None:
    """A name no flow can read, a variable no step sets and a step that records nothing are
    load errors (tests/broken_flows/); what a template may read loads."""
    (tmp_path / "reads.yaml").write_text("""\
trigger: {channels: [voice, messaging], default: true}
fallback_queue: standard
steps:
  lookup:
    kind: fetch
    url: "{{ settings.loyalty_api_url }}/c/{{ params.ForwardedFrom | urlencode }}"
    save: {tier: loyaltyStatus}
    next: menu
    on_error: menu
  menu: {kind: ask, prompt: "{{ contact.name }}, press 1.", save: choice, next: note,
         on_exhausted: note}
  note:
    kind: set
    vars:
      summary: >-
        {% set ns = namespace(n=0) %}{% for i in range(2) %}{{ loop.index }}{% endfor %}
        {{ vars['tier'] }} {{ vars.choice | upper }} {{ steps.lookup.status }}
        {{ steps.menu.answer if steps.menu and steps.menu.valid }}
    next: by_tier
  by_tier:
    kind: branch
    value: vars.tier
    cases: [{when: "steps.lookup.outcome == 'ok' and vars.summary", next: done}]
    else: done
  done: {kind: route, queue: standard, message: "{{ params.Body }} {{ vars }}"}
""")
    assert load_flows(tmp_path, queue_names=QUEUES).flows["reads"]


def test_a_broken_step_may_set_any_variable_but_the_steps_named_are_still_checked(
        tmp_path: Path) -> None:
    """A step that does not load is left out of the later checks: a variable read elsewhere
    may be its own, so it is not told as set by no step."""
    (tmp_path / "partial.yaml").write_text("""\
trigger: {channels: [voice], default: true}
fallback_queue: standard
steps:
  lookup: {kind: fetch, url: "{{ settings.x", save: {tier: t}, next: by_tier, on_error: by_tier}
  by_tier:
    kind: branch
    value: vars.tier
    cases: [{when: "steps.lokup.status == 404", next: done}]
    else: done
  done: {kind: route, queue: standard}
""")
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, queue_names=QUEUES)
    assert [p.split(": ", 1)[1] for p in refused.value.problems] == [
        "steps.lookup.url: invalid template '{{ settings.x': unexpected end of template, "
        "expected 'end of print statement'.",
        "steps.by_tier.cases.0.when: steps.lokup names no step: did you mean 'lookup'?"]


def test_a_setting_is_read_by_a_name_flows_can_read_when_the_loader_is_given_them(
        tmp_path: Path) -> None:
    """`settings.loyalty_url` reads as nothing: a request to it fails, and every caller takes
    the error exit. The server, a publish and `ivr flows validate` give the loader the names of
    the settings flows can read; without them (None) nothing is checked, as for secrets."""
    (tmp_path / "reads.yaml").write_text("""\
trigger: {channels: [voice], default: true}
fallback_queue: standard
steps:
  note:
    kind: set
    vars:
      region: "{{ settings['region'] }}"
      every: "{{ settings }} {{ settings.loyalty_api_url }} {{ settings[vars.region] }}"
    next: by_region
  by_region:
    kind: branch
    value: vars.region
    cases: [{when: "settings.loyalty_api_tokn and settings.region", next: done}]
    else: done
  done: {kind: route, queue: standard}
""")
    assert load_flows(tmp_path, queue_names=QUEUES).flows["reads"]
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, queue_names=QUEUES, settings=FLOW_SETTINGS)
    assert [p.split(": ", 1)[1] for p in refused.value.problems] == [
        "steps.note.vars.region: settings.region names no setting a flow can read: the "
        "settings a flow can read are loyalty_api_token, loyalty_api_url",
        "steps.by_region.cases.0.when: settings.loyalty_api_tokn names no setting a flow can "
        "read: did you mean 'loyalty_api_token'?",
        "steps.by_region.cases.0.when: settings.region names no setting a flow can read: the "
        "settings a flow can read are loyalty_api_token, loyalty_api_url"]


# Four names in it hold nothing, and Jinja reads each as nothing: the flow loaded, and sent every
# VIP to `else` (issue 17).
VIP_BY_SEGMENT = """\
trigger: {channels: [voice], numbers: ["+15005550196"]}
fallback_queue: standard
steps:
  lookup:
    kind: fetch
    url: "{{ settings.loyalty_url }}/customers/{{ contact.number | urlencode }}"
    headers: {Authorization: "Bearer {{ secrets.crm_tokn }}"}
    save: {segment: loyaltyStatus}
    next: by_segment
    on_error: by_segment
  by_segment:
    kind: branch
    value: var.segment
    cases:
      - {equals: vip, next: to_gold}
      - {when: "steps.lokup.status == 404", next: to_gold}
    else: to_standard
  to_gold: {kind: route, queue: gold}
  to_standard: {kind: route, queue: standard}
"""


@pytest.mark.parametrize("mistake", [
    "    value: var.segment\n",  # the flow's own checks fail
    "    value: vars.segment\n    vlaue: vars.segment\n",  # a field fails
], ids=["flow", "field"])
def test_a_broken_flow_tells_its_unset_secrets_and_unknown_settings_with_its_other_problems(
        tmp_path: Path, mistake: str) -> None:
    """Each misread name that sends callers down the wrong branch is told in one run, with the
    closest known name, whatever else is wrong with the flow."""
    (tmp_path / "vip.yaml").write_text(
        VIP_BY_SEGMENT.replace("    value: var.segment\n", mistake))
    with pytest.raises(FlowLoadError) as refused:
        load_flows(tmp_path, queue_names=QUEUES, secrets={"crm_token"}, settings=FLOW_SETTINGS)
    problems = [p.split(": ", 1)[1] for p in refused.value.problems]
    assert problems[-3:] == [
        "steps.by_segment.cases.1.when: steps.lokup names no step: did you mean 'lookup'?",
        "steps.lookup.headers.Authorization: secrets.crm_tokn is not set: did you mean "
        "'crm_token'? (IVR_SECRET_CRM_TOKEN is set)",
        "steps.lookup.url: settings.loyalty_url names no setting a flow can read: did you mean "
        "'loyalty_api_url'?"]
    assert problems[0] == ("steps.by_segment.value: 'var' is not a name a flow can read: did "
                           "you mean 'vars'?" if "var." in mistake else
                           "steps.by_segment: unknown field 'vlaue': did you mean 'value'?")
    assert len(problems) == 4
