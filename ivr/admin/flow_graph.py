"""A flow laid out for drawing on the admin page: its steps in rows, each below every step that
leads to it (loops aside), and its exits as edges labelled like the flow's fields (`next`,
`on_error`, a branch's case). The page draws it as an SVG with no script and nothing loaded from
elsewhere; `ivr flows graph` gives the same graph as Mermaid text.

A layered drawing in the manner of Sugiyama's: rows by the longest path from the start, an edge
across several rows bent through a point in each row it passes (in a gap between steps, so it
never crosses one), rows ordered to put each step near its neighbours, and the edges that go back
up a loop routed around the right-hand side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ivr.flows.model import Flow
from ivr.flows.step import Step

Shape = Literal["entry", "action", "decision", "exit"]
Point = tuple[float, float]

# Sizes in the drawing's pixels. The text is monospace, so its width is known here without a
# browser: CHAR_WIDTH for the 13 px font of a node's kind and an edge's label.
NODE_HEIGHT = 44.0
ROW_GAP = 62.0  # between rows: room for the edges' labels
NODE_GAP = 28.0  # between steps in a row
BEND_GAP = 14.0  # beside the point where an edge crosses a row
MARGIN = 12.0
CHAR_WIDTH = 7.9
NODE_PADDING = 14.0
DECISION_POINT = 12.0  # a decision's pointed ends
MIN_NODE_WIDTH = 84.0
LABEL_HEIGHT = 16.0
LABEL_PADDING = 4.0
LABEL_GAP = 4.0
MAX_LABEL = 28  # characters of an edge's label shown; the whole one is its tooltip
LANE_GAP = 16.0  # between the loops' lanes on the right
LOOP_STEP = 5.0  # between the horizontal runs of two loops in one gap
ORDERING_SWEEPS = 6
PLACEMENT_SWEEPS = 4
ENTRY = "(start)"  # the entry's node id: not a step id (those begin with a letter)


@dataclass(frozen=True)
class Node:
    """A step (or the flow's entry) and where it is drawn: (x, y) is its top left corner."""

    id: str
    kind: str  # the step kind and its detail, `route to gold`; the entry's: its channels
    shape: Shape
    queues: tuple[str, ...]  # the queues the step routes to
    row: int
    x: float
    y: float
    width: float
    height: float = NODE_HEIGHT

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def bottom(self) -> float:
        return self.y + self.height

    def outline(self) -> str:
        """The SVG points of a decision's hexagon."""
        x, y, right, bottom, middle = self.x, self.y, self.right, self.bottom, self.y + self.height / 2
        corners = [(x, middle), (x + DECISION_POINT, y), (right - DECISION_POINT, y),
                   (right, middle), (right - DECISION_POINT, bottom), (x + DECISION_POINT, bottom)]
        return " ".join(f"{px:g},{py:g}" for px, py in corners)


@dataclass(frozen=True)
class Label:
    text: str  # as shown (shortened past MAX_LABEL characters)
    full: str
    x: float  # its box's centre
    y: float
    width: float
    height: float = LABEL_HEIGHT


@dataclass(frozen=True)
class Edge:
    """An exit from `source` to `target`: every label of the exits between them, and the points
    of its line, from the source's border to the target's."""

    source: str
    target: str
    label: Label
    points: tuple[Point, ...]
    loop: bool  # it goes back up, to a step before it
    unanswered: bool  # voice only: the queue's every line failed

    def path(self) -> str:
        return "M" + " L".join(f"{x:g},{y:g}" for x, y in self.points)


@dataclass(frozen=True)
class FlowDrawing:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: float
    height: float


@dataclass
class _Exit:
    source: str
    target: str
    labels: list[str]
    unanswered: bool = False
    loop: bool = False


def flow_drawing(flow: Flow) -> FlowDrawing:
    """The layout of `flow`'s steps and exits."""
    exits = _exits(flow)
    _mark_loops(flow, exits)
    rows = _rows(flow, exits)
    chains = _chains(exits, rows)
    above, below = _links(exits, chains)
    order = _ordered_rows(rows, chains, above, below, _discovery(flow, exits))
    widths = {step_id: _node_width(step_id, flow.steps[step_id]) for step_id in flow.steps}
    widths[ENTRY] = max(MIN_NODE_WIDTH, len(_arrival(flow)) * CHAR_WIDTH + 2 * NODE_PADDING)
    centres = _placed(order, above, below, widths)
    left = min(centres[item] - widths.get(item, 0) / 2 for row in order for item in row)
    nodes = {
        item: _node(flow, item, row, centres[item] - left + MARGIN - widths[item] / 2,
                    widths[item])
        for row, items in enumerate(order) for item in items if not _is_bend(item)}
    bends = {item: (centres[item] - left + MARGIN, _row_top(row))
             for row, items in enumerate(order) for item in items if _is_bend(item)}
    edges = _drawn_edges(exits, chains, nodes, bends)
    right = max([node.right for node in nodes.values()]
                + [point[0] for edge in edges for point in edge.points]
                + [edge.label.x + edge.label.width / 2 for edge in edges])
    return FlowDrawing(tuple(nodes.values()), tuple(edges), round(right + MARGIN, 1),
                       _row_top(len(order)) - ROW_GAP + MARGIN)


# --- the graph ----------------------------------------------------------------------------------

def _exits(flow: Flow) -> list[_Exit]:
    """Each (source, target) once, with every label between them: `next, on_error`."""
    found: dict[tuple[str, str], _Exit] = {
        (ENTRY, flow.start_step): _Exit(ENTRY, flow.start_step, [])}
    for step_id, step in flow.steps.items():
        labelled = step.labelled_exits()
        if step.hands_off and flow.unanswered is not None:
            labelled.append(("unanswered", flow.unanswered))  # voice: every line failed
        for label, target in labelled:
            exit_ = found.setdefault((step_id, target), _Exit(step_id, target, []))
            exit_.labels.append(label)
            exit_.unanswered = label == "unanswered" and len(exit_.labels) == 1
    return list(found.values())


def _successors(exits: Iterable[_Exit]) -> dict[str, list[_Exit]]:
    successors: dict[str, list[_Exit]] = {}
    for exit_ in exits:
        successors.setdefault(exit_.source, []).append(exit_)
    return successors


def _mark_loops(flow: Flow, exits: list[_Exit]) -> None:
    """Mark the exits that close a loop (a depth-first walk from the entry meets a step it is
    still inside), so that what is left has no cycle and can be laid out in rows."""
    successors = _successors(exits)
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    for root in [ENTRY, *flow.steps]:  # the steps after the entry: none left in a valid flow
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(successors.get(root, [])))]
        while stack:
            node, pending = stack[-1]
            exit_ = next(pending, None)
            if exit_ is None:
                state[node] = 2
                stack.pop()
                continue
            seen = state.get(exit_.target)
            if seen == 1:
                exit_.loop = True
            elif seen is None:
                state[exit_.target] = 1
                stack.append((exit_.target, iter(successors.get(exit_.target, []))))


def _rows(flow: Flow, exits: list[_Exit]) -> dict[str, int]:
    """Each step's row: the longest path to it from the entry, loops left out, so that every
    exit but a loop's goes down."""
    incoming: dict[str, list[str]] = {}
    for exit_ in exits:
        if not exit_.loop:
            incoming.setdefault(exit_.target, []).append(exit_.source)
    rows: dict[str, int] = {ENTRY: 0}

    def row(step_id: str) -> int:
        # Iterative: a flow may have a few hundred steps in a line.
        walk = [step_id]
        while walk:
            current = walk[-1]
            if current in rows:
                walk.pop()
                continue
            missing = [source for source in incoming.get(current, []) if source not in rows]
            if missing:
                walk.extend(missing)
                continue
            rows[current] = 1 + max((rows[source] for source in incoming.get(current, [])),
                                    default=0)
            walk.pop()
        return rows[step_id]

    for step_id in flow.steps:
        row(step_id)
    return rows


def _chains(exits: list[_Exit], rows: dict[str, int]) -> dict[int, list[str]]:
    """For each exit (by its index), the items it passes through row by row: its source, a bend
    in each row it crosses, its target. A loop's is its two ends (it goes around the side)."""
    chains: dict[int, list[str]] = {}
    for index, exit_ in enumerate(exits):
        if exit_.loop:
            chains[index] = [exit_.source, exit_.target]
            continue
        bends = [f"{index}|{row}" for row in range(rows[exit_.source] + 1, rows[exit_.target])]
        chains[index] = [exit_.source, *bends, exit_.target]
    return chains


def _is_bend(item: str) -> bool:
    return "|" in item


def _discovery(flow: Flow, exits: list[_Exit]) -> dict[str, int]:
    """The order a breadth-first walk from the entry meets each step: a row's first order."""
    successors = _successors(exits)
    seen = {ENTRY: 0}
    queue = [ENTRY]
    for current in queue:
        for exit_ in successors.get(current, []):
            if exit_.target not in seen:
                seen[exit_.target] = len(seen)
                queue.append(exit_.target)
    for step_id in flow.steps:
        seen.setdefault(step_id, len(seen))
    return seen


# --- rows: order and place ----------------------------------------------------------------------

Neighbours = dict[str, list[str]]


def _links(exits: list[_Exit], chains: dict[int, list[str]]) -> tuple[Neighbours, Neighbours]:
    """Each item's neighbours in the row above and in the row below (loops left out)."""
    above: Neighbours = {}
    below: Neighbours = {}
    for index, chain in chains.items():
        if exits[index].loop:
            continue
        for upper, lower in zip(chain, chain[1:]):
            below.setdefault(upper, []).append(lower)
            above.setdefault(lower, []).append(upper)
    return above, below


def _ordered_rows(rows: dict[str, int], chains: dict[int, list[str]], above: Neighbours,
                  below: Neighbours, discovery: dict[str, int]) -> list[list[str]]:
    """The items of each row, left to right: first as a walk from the entry meets them, then
    each sorted by the mean position of its neighbours, down and up in turn, which untangles
    most crossings."""
    rank: dict[str, float] = dict(discovery)
    items_row = dict(rows)
    for index, chain in chains.items():
        for item in chain[1:-1]:
            items_row[item] = int(item.split("|")[1])
            rank[item] = discovery[chain[0]] + 0.5
    order = [sorted((item for item, row in items_row.items() if row == number),
                    key=lambda item: rank[item])
             for number in range(max(items_row.values()) + 1)]
    for sweep in range(ORDERING_SWEEPS):
        downward = sweep % 2 == 0
        neighbours = above if downward else below
        sequence = range(1, len(order)) if downward else range(len(order) - 2, -1, -1)
        for number in sequence:
            position = {item: index for index, item in
                        enumerate(order[number - 1 if downward else number + 1])}
            current = {item: index for index, item in enumerate(order[number])}

            def weight(item: str) -> float:
                linked = [position[other] for other in neighbours.get(item, [])
                          if other in position]
                return sum(linked) / len(linked) if linked else current[item]

            order[number].sort(key=lambda item: (weight(item), current[item]))
    return order


def _placed(order: list[list[str]], above: Neighbours, below: Neighbours,
            widths: dict[str, float]) -> dict[str, float]:
    """Each item's centre: rows packed left to right, then each item pulled towards the mean of
    its neighbours above (then below, in turn) as far as its row's order and gaps allow."""
    centres: dict[str, float] = {}
    for items in order:
        _pack(items, {item: 0.0 for item in items}, widths, centres)
    for sweep in range(PLACEMENT_SWEEPS):
        neighbours = above if sweep % 2 == 0 else below
        for items in order if sweep % 2 == 0 else reversed(order):
            wanted = {}
            for item in items:
                linked = [centres[other] for other in neighbours.get(item, [])]
                wanted[item] = sum(linked) / len(linked) if linked else centres[item]
            _pack(items, wanted, widths, centres)
    return centres


def _pack(items: list[str], wanted: dict[str, float], widths: dict[str, float],
          centres: dict[str, float]) -> None:
    """Place a row's items in order, each at least a gap right of the one before, then shift the
    row as a whole so that on average they sit where they were wanted."""
    placed: list[float] = []
    for index, item in enumerate(items):
        centre = wanted[item]
        if index:
            previous = items[index - 1]
            least = (placed[-1] + _half(previous, widths) + _gap(previous, item)
                     + _half(item, widths))
            centre = max(centre, least)
        placed.append(centre)
    shift = sum(wanted[item] - centre for item, centre in zip(items, placed)) / len(items)
    for item, centre in zip(items, placed):
        centres[item] = centre + shift


def _half(item: str, widths: dict[str, float]) -> float:
    return widths.get(item, 0.0) / 2


def _gap(left: str, right: str) -> float:
    return BEND_GAP if _is_bend(left) or _is_bend(right) else NODE_GAP


def _row_top(row: int) -> float:
    return MARGIN + row * (NODE_HEIGHT + ROW_GAP)


# --- nodes and edges ----------------------------------------------------------------------------

def _kind(step: Step) -> str:
    return f"{step.kind}{step.graph_detail()}"  # type: ignore[attr-defined]  (each kind has it)


def _arrival(flow: Flow) -> str:
    """What the entry says: what starts the flow, `voice or messaging`."""
    return " or ".join(flow.trigger.channels)


def _node_width(step_id: str, step: Step) -> float:
    text = max(len(step_id), len(_kind(step))) * CHAR_WIDTH + 2 * NODE_PADDING
    return max(MIN_NODE_WIDTH, text) + (2 * DECISION_POINT if step.shape == "decision" else 0)


def _node(flow: Flow, item: str, row: int, x: float, width: float) -> Node:
    if item == ENTRY:
        return Node(item, _arrival(flow), "entry", (), row, round(x, 1), _row_top(row), round(width, 1))
    step = flow.steps[item]
    return Node(item, _kind(step), step.shape, tuple(queue for _, queue in step.queue_targets()),
                row, round(x, 1), _row_top(row), round(width, 1))


def _drawn_edges(exits: list[_Exit], chains: dict[int, list[str]], nodes: dict[str, Node],
                 bends: dict[str, Point]) -> list[Edge]:
    """Each exit's line: from a point on its source's bottom to one on its target's top (the
    exits of one step spread along its border in the order they go), through its bends; a
    loop's around the right of everything, in a lane of its own."""
    lines: dict[int, list[Point]] = {}
    for index, exit_ in enumerate(exits):
        if not exit_.loop:
            # Down through each row it crosses, beside that row's steps.
            through = [point for item in chains[index][1:-1]
                       for point in (bends[item], (bends[item][0], bends[item][1] + NODE_HEIGHT))]
            lines[index] = [(0.0, 0.0), *through, (0.0, 0.0)]
    lane = max([node.right for node in nodes.values()] + [x for x, _ in bends.values()])
    loop_number, room = 0, 0.0
    for index, exit_ in enumerate(exits):
        if exit_.loop:
            loop_number += 1
            lane += LANE_GAP + room  # right of the loop before, and of its label
            room = _label_width(exit_) + LABEL_GAP
            source, target = nodes[exit_.source], nodes[exit_.target]
            below = source.bottom + LOOP_STEP * (1 + loop_number)
            above = target.y - LOOP_STEP * (1 + loop_number)
            lines[index] = [(0.0, 0.0), (0.0, below), (lane, below), (lane, above), (0.0, above),
                            (0.0, 0.0)]
    _attach_ends(exits, nodes, lines)
    labels = _labels(exits, nodes, lines)
    return [Edge(exit_.source, exit_.target, labels[index],
                 tuple((round(x, 1), round(y, 1)) for x, y in lines[index]), exit_.loop,
                 exit_.unanswered) for index, exit_ in enumerate(exits)]


def _attach_ends(exits: list[_Exit], nodes: dict[str, Node],
                 lines: dict[int, list[Point]]) -> None:
    """Spread the lines leaving each node along its bottom, and those reaching it along its top,
    ordered by where they come from or go, so that they do not cross at the node."""
    leaving: dict[str, list[int]] = {}
    reaching: dict[str, list[int]] = {}
    for index, exit_ in enumerate(exits):
        leaving.setdefault(exit_.source, []).append(index)
        reaching.setdefault(exit_.target, []).append(index)

    def toward(index: int, end: int) -> float:
        line = lines[index]
        if exits[index].loop:
            return line[2][0]  # its lane, right of everything
        if len(line) > 2:
            return line[1 if end == 0 else -2][0]
        other = nodes[exits[index].target if end == 0 else exits[index].source]
        return other.x + other.width / 2

    for name, indexes in leaving.items():
        node = nodes[name]
        for slot, index in enumerate(sorted(indexes, key=lambda i: toward(i, 0))):
            x = _slot(node, slot, len(indexes))
            lines[index][0] = (x, node.bottom)
            if exits[index].loop:
                lines[index][1] = (x, lines[index][1][1])
    for name, indexes in reaching.items():
        node = nodes[name]
        for slot, index in enumerate(sorted(indexes, key=lambda i: toward(i, -1))):
            x = _slot(node, slot, len(indexes))
            lines[index][-1] = (x, node.y)
            if exits[index].loop:
                lines[index][-2] = (x, lines[index][-2][1])


def _slot(node: Node, slot: int, count: int) -> float:
    """The `slot`th of `count` points spread along a node's straight middle part."""
    inner = node.width - 2 * DECISION_POINT if node.shape == "decision" else node.width
    start = node.x + (node.width - inner) / 2
    return start + inner * (slot + 1) / (count + 1)


def _labels(exits: list[_Exit], nodes: dict[str, Node],
            lines: dict[int, list[Point]]) -> dict[int, Label]:
    """Each exit's label: halfway down the gap below its source, on its line (a loop's, on its
    lane); the labels of one gap pushed apart so that none covers another."""
    placed: dict[int, Label] = {}
    by_gap: dict[float, list[int]] = {}
    for index, exit_ in enumerate(exits):
        full, text, width = ", ".join(exit_.labels), _label_text(exit_), _label_width(exit_)
        line = lines[index]
        if exit_.loop:  # right of its lane, which has room for it
            x, y = line[2][0] + LABEL_GAP + width / 2, (line[2][1] + line[3][1]) / 2
        else:
            y = nodes[exit_.source].bottom + ROW_GAP / 2
            (x0, y0), (x1, y1) = line[0], line[1]
            x = x0 + (x1 - x0) * (y - y0) / (y1 - y0)
        placed[index] = Label(text, full, round(x, 1), round(y, 1), round(width, 1))
        if text and not exit_.loop:
            by_gap.setdefault(y, []).append(index)
    for indexes in by_gap.values():
        _spread(indexes, placed)
    return placed


def _label_text(exit_: _Exit) -> str:
    full = ", ".join(exit_.labels)
    return full if len(full) <= MAX_LABEL else full[:MAX_LABEL - 1] + "…"


def _label_width(exit_: _Exit) -> float:
    text = _label_text(exit_)
    return len(text) * CHAR_WIDTH + 2 * LABEL_PADDING if text else 0.0


def _spread(indexes: list[int], labels: dict[int, Label]) -> None:
    """Push a gap's labels apart, left to right, then back as a group to where they were."""
    ordered = sorted(indexes, key=lambda index: labels[index].x)
    centres: list[float] = []
    for position, index in enumerate(ordered):
        centre = labels[index].x
        if position:
            before = labels[ordered[position - 1]]
            centre = max(centre, centres[-1] + before.width / 2 + LABEL_GAP
                         + labels[index].width / 2)
        centres.append(centre)
    shift = sum(labels[index].x - centre for index, centre in zip(ordered, centres)) / len(ordered)
    least = min(centre + shift - labels[index].width / 2
                for index, centre in zip(ordered, centres))
    shift += max(0.0, MARGIN - least)  # never past the drawing's left edge
    for index, centre in zip(ordered, centres):
        label = labels[index]
        labels[index] = Label(label.text, label.full, round(centre + shift, 1), label.y,
                              label.width)
