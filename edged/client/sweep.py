"""The table every `edged bench ... --sweep` prints: a line per stream count, then where it stops keeping up."""

from __future__ import annotations

from collections.abc import Sequence


def sweep_table(head: list[str], rows: Sequence[tuple[int, bool, list[object]]], failed: str) -> str:
    """`rows`: (streams, keeps_up, cells) per count tried; each cell right-aligned under its
    heading. `failed` says what happened at the first count that did not keep up, with `{kept}`
    (the most streams that did) and `{first}` filled in."""
    lines = ["  ".join(head)]
    lines += ["  ".join(str(c).rjust(len(h)) for c, h in zip(cells, head, strict=True)) for _, _, cells in rows]
    kept = [streams for streams, keeps_up, _ in rows if keeps_up]
    first_not = next((streams for streams, keeps_up, _ in rows if not keeps_up), None)
    if first_not is None:
        lines.append(f"Keeps up with real time at every count tried (up to {rows[-1][0]} streams).")
    else:
        lines.append(failed.format(kept=max(kept) if kept else 0, first=first_not))
    return "\n".join(lines)
