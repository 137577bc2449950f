"""The layout of a flow's drawing on the admin page (ivr.admin.flow_graph): every shipped flow
drawn readably (no step over another, no line through a step, no label over another), rows
below the steps that lead to them, loops around the side, exits labelled as the flow names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.admin.flow_graph import (
    ENTRY,
    NODE_HEIGHT,
    Edge,
    FlowDrawing,
    Node,
    flow_drawing,
)
from ivr.flows.loader import load_flow_texts, read_flow_texts
from ivr.flows.model import Flow

FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"
SHIPPED = load_flow_texts(read_flow_texts(FLOWS_DIR), None, {"crm_token"}).flows


def drawing(name: str) -> FlowDrawing:
    return flow_drawing(SHIPPED[name])


def nodes_of(drawn: FlowDrawing) -> dict[str, Node]:
    return {node.id: node for node in drawn.nodes}


def edge(drawn: FlowDrawing, source: str, target: str) -> Edge:
    (found,) = [e for e in drawn.edges if (e.source, e.target) == (source, target)]
    return found


def crosses(start: tuple[float, float], end: tuple[float, float], node: Node) -> bool:
    """Whether the segment passes through the node's inside (its border shrunk by a pixel)."""
    left, top, right, bottom = node.x + 1, node.y + 1, node.right - 1, node.bottom - 1
    (x0, y0), (x1, y1) = start, end
    low, high = 0.0, 1.0  # Liang-Barsky: clip the segment to the box
    for p, q in ((-(x1 - x0), x0 - left), (x1 - x0, right - x0),
                 (-(y1 - y0), y0 - top), (y1 - y0, bottom - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            low = max(low, t)
        else:
            high = min(high, t)
    return low < high


def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_flow_is_drawn_with_nothing_over_anything_else(name: str) -> None:
    drawn = drawing(name)
    flow = SHIPPED[name]
    nodes = nodes_of(drawn)
    assert set(nodes) == {ENTRY, *flow.steps}
    boxes = [(node.x, node.y, node.right, node.bottom) for node in drawn.nodes]
    for index, box in enumerate(boxes):
        assert not any(overlap(box, other) for other in boxes[index + 1:]), nodes
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= drawn.width and box[3] <= drawn.height
    for line in drawn.edges:
        source, target = nodes[line.source], nodes[line.target]
        assert line.points[0][1] == source.bottom and source.x <= line.points[0][0] <= source.right
        assert line.points[-1][1] == target.y and target.x <= line.points[-1][0] <= target.right
        for start, end in zip(line.points, line.points[1:]):
            for node in drawn.nodes:
                if node.id not in (line.source, line.target):
                    assert not crosses(start, end, node), (line.source, line.target, node.id)
    labels = [(label.x - label.width / 2, label.y - label.height / 2,
               label.x + label.width / 2, label.y + label.height / 2)
              for label in (line.label for line in drawn.edges) if label.text]
    for index, box in enumerate(labels):
        assert not any(overlap(box, other) for other in labels[index + 1:])
        assert 0 <= box[0] and box[2] <= drawn.width
        assert not any(overlap(box, (node.x, node.y, node.right, node.bottom))
                       for node in drawn.nodes)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_step_is_below_every_step_that_leads_to_it_but_for_a_loop(name: str) -> None:
    drawn = drawing(name)
    nodes = nodes_of(drawn)
    assert nodes[ENTRY].row == 0 and nodes[SHIPPED[name].start_step].row == 1
    for line in drawn.edges:
        above = nodes[line.target].row > nodes[line.source].row
        assert above != line.loop, (line.source, line.target)
    for node in drawn.nodes:
        if node.row > 0:  # a row lower than needed would leave a gap in the drawing
            assert any(nodes[line.source].row == node.row - 1 for line in drawn.edges
                       if line.target == node.id and not line.loop)


def test_a_step_shows_its_id_and_kind_and_a_route_its_queue() -> None:
    nodes = nodes_of(drawing("loyalty_routing"))
    assert (nodes["lookup"].kind, nodes["lookup"].shape) == ("fetch", "action")
    assert (nodes["by_tier"].kind, nodes["by_tier"].shape) == ("branch", "decision")
    assert (nodes["to_gold"].kind, nodes["to_gold"].queues) == ("route to gold", ("gold",))
    assert nodes["to_gold"].shape == "exit"
    shift = nodes_of(drawing("shift_routing"))
    assert shift["day_hours"].kind == "hours day_shift"
    assert nodes[ENTRY].kind == "voice or messaging"
    assert shift[ENTRY].kind == "voice"


def test_exits_to_one_step_are_one_edge_labelled_with_each_field() -> None:
    drawn = drawing("loyalty_routing")
    assert edge(drawn, "lookup", "by_tier").label.text == "next, on_error"
    assert [edge(drawn, "by_tier", target).label.text
            for target in ("gold_ack", "platinum_ack", "standard_ack")] == [
        "gold", "platinum", "else"]
    assert edge(drawn, ENTRY, "lookup").label.text == ""


def test_a_long_condition_is_shortened_on_its_edge_and_kept_whole_for_its_tooltip() -> None:
    label = edge(drawing("vip_by_email"), "by_type", "manager_ack").label
    assert label.full == "steps.ask_email and not steps.ask_email.valid"
    assert label.text == "steps.ask_email and not ste…" and len(label.text) == 28


def test_a_loop_goes_back_up_around_the_right_of_every_step() -> None:
    drawn = drawing("language_routing")
    loop = edge(drawn, "handover", "by_language")
    assert loop.loop
    assert [line for line in drawn.edges if line.loop] == [loop]
    lane = max(x for x, _ in loop.points)
    assert lane > max(node.right for node in drawn.nodes)
    assert loop.label.x - loop.label.width / 2 > lane  # beside its lane, on no step


def test_an_edge_across_rows_bends_beside_the_steps_of_the_rows_it_crosses() -> None:
    drawn = drawing("vip_by_email")
    nodes = nodes_of(drawn)
    skip = edge(drawn, "has_email", "lookup")
    assert nodes["lookup"].row - nodes["has_email"].row == 2
    assert len(skip.points) == 4  # down through ask_email's row, beside it
    (_, top), (_, bottom) = skip.points[1], skip.points[2]
    assert (top, bottom) == (nodes["ask_email"].y, nodes["ask_email"].y + NODE_HEIGHT)


def test_a_call_whose_queue_fails_goes_to_the_unanswered_step_by_dashed_edges() -> None:
    drawn = drawing("team_choice")
    unanswered = [line for line in drawn.edges if line.unanswered]
    assert sorted(line.source for line in unanswered) == ["to_operator", "to_sales", "to_support"]
    assert {line.target for line in unanswered} == {"all_busy"}
    assert {line.label.text for line in unanswered} == {"unanswered"}
    assert not [line for line in drawing("loyalty_routing").edges if line.unanswered]


def test_a_loop_back_to_the_first_step_and_a_step_with_many_exits_are_drawn() -> None:
    flow = Flow.model_validate({
        "name": "menu_loop", "trigger": {"channels": ["voice"], "default": True},
        "fallback_queue": "standard",
        "steps": {
            "menu": {"kind": "ask", "prompt": "Press 1 or 2.", "expect": "choice",
                     "options": {"one": ["1"], "two": ["2"]}, "save": "choice",
                     "next": "by_choice", "on_exhausted": "menu"},
            "by_choice": {"kind": "branch", "value": "vars.choice",
                          "cases": [{"equals": "one", "next": "to_one"},
                                    {"equals": "two", "next": "menu"}],
                          "else": "to_one"},
            "to_one": {"kind": "route", "queue": "standard"},
        }})
    drawn = flow_drawing(flow)
    loops = sorted((line.source, line.target) for line in drawn.edges if line.loop)
    assert loops == [("by_choice", "menu"), ("menu", "menu")]
    lanes = sorted(max(x for x, _ in line.points) for line in drawn.edges if line.loop)
    assert lanes[0] != lanes[1]  # each loop in a lane of its own
    assert edge(drawn, "by_choice", "to_one").label.text == "one, else"


def segments_crossing(drawn: FlowDrawing) -> int:
    """How many times two edges' lines cross (loops, which go around the side, left out)."""

    def turn(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    segments = [(index, part) for index, line in enumerate(drawn.edges) if not line.loop
                for part in zip(line.points, line.points[1:])]
    return sum(1 for n, (i, (a, b)) in enumerate(segments) for j, (c, d) in segments[n + 1:]
               if i != j and turn(a, b, c) * turn(a, b, d) < 0
               and turn(c, d, a) * turn(c, d, b) < 0)


def test_steps_are_ordered_in_their_rows_so_that_edges_do_not_cross() -> None:
    """A walk from the start meets `sorry` (the branch's third exit) before `thanks` (its first
    exit's next step): in that order their edges would cross."""
    flow = Flow.model_validate({
        "name": "untangled", "trigger": {"channels": ["voice"], "default": True},
        "fallback_queue": "standard",
        "steps": {
            "choose": {"kind": "branch", "value": "contact.number",
                       "cases": [{"equals": "1", "next": "first"},
                                 {"equals": "2", "next": "second"}],
                       "else": "sorry"},
            "first": {"kind": "say", "text": "One.", "next": "thanks"},
            "second": {"kind": "say", "text": "Two.", "next": "sorry"},
            "thanks": {"kind": "route", "queue": "gold"},
            "sorry": {"kind": "route", "queue": "standard"},
        }})
    assert segments_crossing(flow_drawing(flow)) == 0
    assert all(segments_crossing(drawing(name)) == 0 for name in SHIPPED)


def test_a_step_with_one_step_before_it_is_drawn_right_under_it() -> None:
    nodes = nodes_of(drawing("loyalty_routing"))
    for before, after in (("gold_ack", "to_gold"), ("platinum_ack", "to_platinum"),
                          ("standard_ack", "to_standard"), (ENTRY, "lookup")):
        assert (nodes[before].x + nodes[before].width / 2
                == pytest.approx(nodes[after].x + nodes[after].width / 2, abs=0.2))
