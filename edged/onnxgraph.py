"""Small rewrites of ONNX graphs shared by the importers and the backends (protobufs only)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def names_used(nodes: Iterable[Any]) -> set[str]:
    """Every tensor name the nodes read, including from inside their subgraphs (outer scope)."""
    used: set[str] = set()
    for node in nodes:
        used.update(node.input)
        for attr in node.attribute:
            if attr.HasField("g"):
                used |= names_used(attr.g.node) | {o.name for o in attr.g.output}
            for g in attr.graphs:
                used |= names_used(g.node) | {o.name for o in g.output}
    return used


def drop_unused_initializers(model: Any) -> None:
    """Remove the initializers no node (nor graph output) reads, in place."""
    graph = model.graph
    used = names_used(graph.node) | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def live_nodes(nodes: Iterable[Any], outputs: Iterable[str]) -> list[Any]:
    """The nodes that `outputs` need, in their order (nodes listed in topological order)."""
    needed, live = set(outputs), []
    for node in reversed(list(nodes)):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]
