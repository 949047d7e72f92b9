"""Pareto front of (quality to maximise, cost to minimise) points, and its knee.

Rules, stated once (tests/test_compare.py holds them to it):

- A point **dominates** another when its quality is >= and its cost is <=, with at least one of
  the two strict. The front is every point no other point dominates.
- **Equal cost** (ties in energy): only the most accurate of the points with that cost can be on
  the front; a less accurate point at the same cost is dominated.
- **Equal quality** (ties in accuracy): only the cheapest can be on the front.
- **Exact duplicates** (same quality and same cost) do not dominate each other: all of them stay
  on the front, or all are off it.
- Points whose quality or cost is missing or not finite take no part (the caller keeps them out
  of the plot's front; they are never silently treated as zero).

The **knee** is the front point nearest the ideal corner (the front's best quality at the
front's least cost), with quality scaled linearly to [0, 1] over the front and cost scaled to
[0, 1] on a log10 scale over the front (energies of the families differ by orders of magnitude, and
the report draws them on log axes; a linear scale would crush every cheap model onto 0). Ties go
to the cheaper point, then the more accurate one, then the first given.
"""
from __future__ import annotations

import math
from typing import Sequence


def _usable(q, c) -> bool:
    return q is not None and c is not None and math.isfinite(q) and math.isfinite(c)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, sorted by cost, then by quality
    descending, then by index. O(n log n): one pass in order of increasing cost."""
    order = sorted((i for i, (q, c) in enumerate(points) if _usable(q, c)),
                   key=lambda i: (points[i][1], -points[i][0], i))
    front: list[int] = []
    best_cheaper = -math.inf  # best quality among points strictly cheaper than the current cost
    k = 0
    while k < len(order):
        cost = points[order[k]][1]
        group = []
        while k < len(order) and points[order[k]][1] == cost:
            group.append(order[k])
            k += 1
        top = points[group[0]][0]  # the group is sorted by quality descending
        if top > best_cheaper:  # not matched by anything cheaper: the group's best are on the front
            front.extend(i for i in group if points[i][0] == top)
            best_cheaper = top
    return front


def knee(points: Sequence[tuple[float, float]], front: Sequence[int] | None = None,
         log_cost: bool = True) -> int | None:
    """Index (into ``points``) of the knee of the front (see the module's rule); None when the
    front is empty. Costs must be > 0 for the log scale; otherwise a linear scale is used."""
    front = list(pareto_front(points) if front is None else front)
    if not front:
        return None
    log_cost = log_cost and all(points[i][1] > 0 for i in front)
    qs = [points[i][0] for i in front]
    cs = [math.log10(points[i][1]) if log_cost else points[i][1] for i in front]

    def scaled(v: float, lo: float, hi: float) -> float:
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    q_lo, q_hi, c_lo, c_hi = min(qs), max(qs), min(cs), max(cs)

    def key(k: int):
        dq, dc = 1 - scaled(qs[k], q_lo, q_hi), scaled(cs[k], c_lo, c_hi)
        return (round(dq * dq + dc * dc, 12), points[front[k]][1], -points[front[k]][0], front[k])

    return front[min(range(len(front)), key=key)]
