"""Templates and expressions: the direct path for plain `{{ a.b }}` text renders exactly what
Jinja renders, and a flow knows whether it reads the contact's memory."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from ivr.flows.loader import load_flows
from ivr.flows.model import Flow
from ivr.flows.step import Contact, Run
from ivr.flows.templates import READABLE, Expression, Template

FLOWS = Path(__file__).resolve().parent.parent / "flows"

_PATHS = ["contact.number", "contact.first_seen", "vars.tier", "vars.missing",
          "vars.missing.deeper", "vars.nested.inner", "vars.items", "vars.__class__",
          "vars.nested.__init__", "settings.loyalty_api_url", "params.Body", "steps.lookup.status",
          "nothing", "nothing.at.all", "range", "vars.number", "vars.none", "vars.list"]
_TEXTS = ["", "/customers/", " (gold): ", "é ✓ ", "{ ", " }", "%", "\n", "a\n"]


def _variables(rng: random.Random) -> dict[str, Any]:
    values: list[Any] = ["Gold", " platinum ", "", "+1 555/0100?a=b&c", "é✓", 7, 2.5, None,
                         True, {"k": "v w"}, ["x"]]
    return {
        "contact": {"number": rng.choice(values), "first_seen": rng.choice(values)},
        "vars": {"tier": rng.choice(values), "nested": {"inner": rng.choice(values)},
                 "number": rng.choice(values), "none": None, "list": [1, 2]},
        "settings": {"loyalty_api_url": "http://127.0.0.1:1/api"},
        "params": {"Body": rng.choice(values)},
        "steps": {"lookup": {"status": rng.choice([200, 404, None])}},
    }


def _random_template(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.4:
            pieces.append(rng.choice(_TEXTS))
        else:
            pipe = " | urlencode" if rng.random() < 0.4 else ""
            pieces.append(f"{{{{ {rng.choice(_PATHS)}{pipe} }}}}")
    return "".join(pieces)


def test_plain_templates_render_what_jinja_renders() -> None:
    rng = random.Random(3)
    direct = 0
    for _ in range(1500):
        template = Template(_random_template(rng))
        variables = _variables(rng)
        expected = template._template.render(variables)  # Jinja's own rendering
        assert template.render(variables) == expected, template.source
        direct += template._plan is not None
    assert direct == 1500  # every one of them took the direct path


def test_plain_expressions_evaluate_to_what_jinja_evaluates() -> None:
    rng = random.Random(4)
    for _ in range(1000):
        expression = Expression(rng.choice(_PATHS))
        variables = _variables(rng)
        assert expression._path is not None
        expected = expression._expression(**variables)
        actual = expression.evaluate(variables)
        assert actual == expected or (callable(actual) and callable(expected)), expression


def test_other_templates_and_expressions_go_through_jinja() -> None:
    variables = {"vars": {"tier": "gold", "n": 3}, "contact": {"number": "+15550100"}}
    cases = {
        "{% if vars.tier %}Bearer {{ vars.tier }}{% endif %}": "Bearer gold",
        "{{ vars.tier | upper }}": "GOLD",
        "{{ vars['tier'] }}": "gold",
        "{{ vars.n + 1 }}": "4",
        "{{ 'x' }}{{ vars.tier }}": "xgold",
    }
    for source, rendered in cases.items():
        template = Template(source)
        assert template._plan is None
        assert template.render(variables) == rendered
    assert Expression("vars.tier == 'gold'")._path is None
    assert Expression("vars.tier == 'gold'").evaluate(variables) is True


def test_a_flow_knows_whether_it_reads_the_contacts_memory() -> None:
    flows = load_flows(FLOWS).flows
    # The reference flow reads only contact.number: no memory load on its hot path.
    assert not flows["loyalty_routing"].reads_contact_memory
    assert flows["new_vs_returning"].reads_contact_memory  # contact.is_returning

    def flow(source: str, **step: Any) -> Flow:
        steps = {"first": {"kind": "say", "text": source, "next": "done"},
                 "done": {"kind": "route", "queue": "standard", **step}}
        return Flow.from_data({"trigger": {"channels": ["voice"]}, "fallback_queue": "standard",
                               "steps": steps}, "f")

    assert not flow("{{ contact.number }} {{ contact.channel }} {{ contact.address }}"
                    ).reads_contact_memory
    assert flow("{{ contact.language }}").reads_contact_memory
    assert flow("{{ contact }}").reads_contact_memory
    assert flow("{{ contact['number'] }}").reads_contact_memory  # not worth telling apart
    assert flow("hi", message="{{ contact.team }}").reads_contact_memory
    branch = Flow.from_data({
        "trigger": {"channels": ["voice"]}, "fallback_queue": "standard",
        "steps": {"b": {"kind": "branch", "cases": [{"when": "contact.is_returning",
                                                     "next": "r"}], "else": "r"},
                  "r": {"kind": "route", "queue": "standard"}}}, "b")
    assert branch.reads_contact_memory  # a condition nested in a case counts too


def test_a_template_of_settings_and_secrets_only_is_rendered_once_per_settings_and_secrets(
) -> None:
    header = Template("{% if secrets.token %}Bearer {{ secrets.token }}{% endif %}"
                      "{{ settings.suffix }}")
    settings, secrets = {"suffix": "!"}, {"token": "s3cret"}
    assert header.render({"settings": settings, "secrets": secrets, "vars": {}}) == "Bearer s3cret!"
    assert header._rendered is not None
    assert header._rendered[0] is settings and header._rendered[1] is secrets
    first = header._rendered[2]
    # Not rendered again, whatever else the call holds.
    assert header.render({"settings": settings, "secrets": secrets, "vars": {"x": 1}}) is first
    # Other settings or secrets (the simulator's, another server's in the same process):
    # rendered anew.
    assert header.render({"settings": settings, "secrets": {}}) == "!"
    assert header.render({"settings": {}, "secrets": {"token": "other"}}) == "Bearer other"
    # What reads more than settings and secrets, or may answer differently, is rendered every
    # time.
    for source in ("{{ settings.token }}{{ vars.x }}", "{{ secrets.token }}{{ contact.number }}",
                   "{{ settings.l | random }}", "{{ lipsum(1) }}",
                   "{% for x in settings.l %}{{ x }}{% endfor %}"):
        assert not Template(source)._settings_only, source


def test_the_secrets_a_template_reads_are_found_in_its_syntax_tree() -> None:
    assert Template("{{ settings.a }}{{ vars.secrets }}").secrets_read() == frozenset()
    assert Template("{% if secrets.a %}Bearer {{ secrets.a }}{% endif %}{{ secrets['b'] }}"
                    ).secrets_read() == {"a", "b"}
    assert Expression("secrets.a | length > 3").secrets_read() == {"a"}
    # What could read any secret, or all of them, is refused.
    for source in ("{{ secrets }}", "{{ secrets[vars.name] }}", "{{ secrets | tojson }}",
                   "{% set s = secrets %}{{ s.a }}", "{% set secrets = vars %}{{ secrets.a }}",
                   "{% for k in secrets %}{{ k }}{% endfor %}"):
        with pytest.raises(ValueError, match="^read a secret by its name, as secrets.crm_token$"):
            Template(source).secrets_read()


def test_a_run_offers_its_templates_every_name_a_flow_can_read() -> None:
    """The load refuses a name outside READABLE: a run must offer each of them, and no other."""
    run = Run(contact=Contact("+1555", "+1555", "voice"), params={}, settings={},
              http=None, deadline=0)  # type: ignore[arg-type]
    assert set(run.variables) == READABLE


def test_the_names_a_template_reads_are_found_in_its_syntax_tree() -> None:
    assert Expression("vars.x or parms.y | default(range(2))").variables() == {"vars", "parms"}
    assert Template("{% set a = 1 %}{% for i in range(3) %}{{ loop.index }}{{ a }}{{ i }}"
                    "{% endfor %}{{ contact.number }}").variables() == {"contact"}
    read = Template("{{ steps.lookup.status }} {{ vars['tier'] }} {{ vars[vars.name] }} "
                    "{{ vars.get('x') }} {{ vars }}{% if vars.items %}{% endif %}")
    assert read.paths_read("steps") == [("lookup", "status")]
    # Read whole, by a computed name or through a dict's method: no name to check.
    assert sorted(read.paths_read("vars")) == [(), (), (), (), ("name",), ("tier",)]
