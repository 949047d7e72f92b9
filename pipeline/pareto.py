"""Pareto front of (quality to maximise, cost to minimise) points, and its knee: the one
definition of both, used by the search's choice of trial (``tuning.study.select_trial``: val/acc
against energy in kWh), the report (``reporting.compare``: test accuracy against each energy
axis) and the compression section (``compression.summary``: accuracy against energy and size).

Rules, stated once (tests/test_pareto.py holds them to it):

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
[0, 1] on a log10 scale over the front. Ties go to the cheaper point, then the more accurate one,
then the first given.

**With noise** (``noisy_front``): each point may carry the standard errors of its quality and
its cost. A point is then dominated only by one that is at least as good on both (as above) and
better by more than the noise on at least one of them (``uncertainty.beyond``): the exact front,
plus every point whose only dominators are within the noise of it. Front points within the noise
of each other on both axes are **ties** (``ties``): a reader should not rank them.

Why log10 for cost, for the report and the search alike: energies differ by orders of magnitude
(families in the report; in a search, trials of different widths, depths and batch sizes,
stopped early or not, differ by large factors too), and what a cheaper model is worth is the
*factor* it saves, not the joules. On a linear scale one expensive point crushes every cheap one
onto 0, and the knee degenerates into "the most accurate of the cheap ones", whatever their
factors. The report draws energy on log axes, so the starred knee is the point nearest the
corner as the reader sees it. The log needs costs > 0: if any front cost is <= 0 (callers leave
unmeasured energy out), the knee falls back to a linear scale.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def _usable(q, c) -> bool:
    return q is not None and c is not None and math.isfinite(q) and math.isfinite(c)


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
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


def knee(points: Sequence[tuple[float | None, float | None]], front: Sequence[int] | None = None) -> int | None:
    """Index (into ``points``) of the knee of the front (see the module's rule); None when the
    front is empty. ``front``: the points' front if already computed (``pareto_front(points)``)."""
    front = list(pareto_front(points) if front is None else front)
    if not front:
        return None
    log_cost = all(points[i][1] > 0 for i in front)
    qs = [points[i][0] for i in front]
    cs = [math.log10(points[i][1]) if log_cost else points[i][1] for i in front]

    def scaled(v: float, lo: float, hi: float) -> float:
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    q_lo, q_hi, c_lo, c_hi = min(qs), max(qs), min(cs), max(cs)

    def key(k: int):
        dq, dc = 1 - scaled(qs[k], q_lo, q_hi), scaled(cs[k], c_lo, c_hi)
        return (round(dq * dq + dc * dc, 12), points[front[k]][1], -points[front[k]][0], front[k])

    return front[min(range(len(front)), key=key)]


Noise = Sequence[tuple[float | None, float | None]]  # (quality's, cost's) standard error per point


def noisy_front(points: Sequence[tuple[float | None, float | None]], noise: Noise | None = None) -> list[int]:
    """The front when a point is dominated only beyond the noise (see the module's rule), in the
    order of ``pareto_front``; without ``noise``, ``pareto_front`` itself. Quadratic in the
    points off the exact front, checked against the whole set in blocks with numpy."""
    exact = pareto_front(points)
    if noise is None:
        return exact
    import numpy as np

    from pipeline.uncertainty import Z

    idx = [i for i, (q, c) in enumerate(points) if _usable(q, c)]
    if not idx:
        return exact
    q = np.array([points[i][0] for i in idx], float)
    c = np.array([points[i][1] for i in idx], float)
    sq = np.array([noise[i][0] or 0.0 for i in idx], float)
    sc = np.array([noise[i][1] or 0.0 for i in idx], float)
    on_exact = set(exact)
    kept = list(exact)
    for a in (k for k, i in enumerate(idx) if i not in on_exact):
        weakly = (q >= q[a]) & (c <= c[a]) & ((q > q[a]) | (c < c[a]))
        beyond_q = (q - q[a]) > Z * np.hypot(sq, sq[a])
        beyond_c = (c[a] - c) > Z * np.hypot(sc, sc[a])
        if not np.any(weakly & (beyond_q | beyond_c)):
            kept.append(idx[a])
    return sorted(kept, key=lambda i: (points[i][1], -points[i][0], i))


def ties(points: Sequence[tuple[float | None, float | None]], members: Sequence[int],
         noise: Noise | None) -> dict[int, list[int]]:
    """For each of ``members`` (e.g. a front), the other members within the noise of it on both
    axes; points with none are left out."""
    from pipeline.uncertainty import beyond

    if noise is None:
        return {}
    out: dict[int, list[int]] = {}
    for a in members:
        near = [b for b in members if b != a
                and not beyond(points[a][0], points[b][0], noise[a][0], noise[b][0])
                and not beyond(points[a][1], points[b][1], noise[a][1], noise[b][1])]
        if near:
            out[a] = near
    return out
