"""Pareto front of (quality to maximise, cost to minimise) points."""
from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, sorted by cost.

    A point dominates another when its quality is >= and its cost is <=, with at least one
    strict. Exact duplicates do not dominate each other: both stay on the front.
    """
    front = []
    for i, (q_i, c_i) in enumerate(points):
        dominated = any(
            q_j >= q_i and c_j <= c_i and (q_j > q_i or c_j < c_i)
            for j, (q_j, c_j) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))
