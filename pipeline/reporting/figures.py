"""The report's figures (matplotlib, Agg backend: no display, no network).

Points are drawn with one ``scatter`` call per (family, stage, on/off the front) set, not one per
point, so a figure of a thousand models costs about as much as one of ten.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.models.family import families as registered_families
from pipeline.reporting.compare import AXES, Comparison
from pipeline.uncertainty import Z

# matplotlib's tab10: a family's colour is the entry at its index in the registry (stable from
# one report to the next), families no longer registered following in name order.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
STAGE_MARKERS = {"train": "o", "tune": "s", "sweep": "^", "compress": "D"}
FRONT_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))  # one per condition kept apart
MAX_LABELS = 8  # a longer front has only its ends and its knee labelled; the tables name the rest


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def family_colors(rows: list[dict]) -> dict[str, str]:
    """The families of ``rows`` in registry order (then by name), each with its colour."""
    present = {r["family"] for r in rows}
    order = list(registered_families())
    order += sorted(present - set(order))
    return {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(order) if f in present}


def _tick_label(v: float, _pos=None) -> str:
    if 1 <= v < 1e7:
        return f"{v:,.0f}"
    return f"{v:g}" if 1e-3 <= v < 1 else f"{v:.0e}"


def _log_axis(axis) -> None:
    """Log scale with plain tick labels at 1, 2, 5 x 10^k (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_tick_label))
    axis.set_minor_formatter(NullFormatter())


def _legend(ax, colors: dict[str, str], stages: list[str], fronts: list[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=c, label=f) for f, c in colors.items()]
    handles += [Line2D([], [], ls="", marker=STAGE_MARKERS.get(s, "x"), color="#555555", mfc="none", label=s)
                for s in stages]
    handles += [Line2D([], [], ls=FRONT_STYLES[i % len(FRONT_STYLES)], color="k", lw=1, label=name)
                for i, name in enumerate(fronts)]
    handles += [Line2D([], [], ls="", marker="*", ms=14, mfc="gold", mec="k", label="knee"),
                Line2D([], [], ls="-", color="#555555", lw=0.8, label=f"{Z:g} standard errors")]
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)


def _front_lines(cmp: Comparison, axis: str) -> list[tuple[str, list[int], list[int]]]:
    """(legend name, front rows, knee rows) of each front drawn: one per condition kept apart,
    or the one front of a mixed comparison."""
    front = cmp.fronts[axis]
    if cmp.filters.mix or len(cmp.conditions) < 2:
        knees = sorted({c.knees.get(axis) for c in cmp.conditions} - {None}) or \
            ([cmp.knees[axis]] if cmp.knees.get(axis) is not None else [])
        return [("Pareto front" + (" (conditions mixed)" if cmp.filters.mix and len(cmp.conditions) > 1 else ""),
                 front, knees[:1] if not cmp.filters.mix else knees)]
    out = []
    for n, cond in enumerate(cmp.conditions, 1):
        members = set(cond.rows)
        k = cond.knees.get(axis)
        out.append((f"Pareto front, C{n}", [i for i in front if i in members], [] if k is None else [k]))
    return out


DPI = 90  # the figures' resolution: drawn at it, so drawing coordinates are the PNG's pixels


def _hover_title(row: dict, key: str, title: str) -> str:
    acc = row["test_acc"]
    se = row.get("test_acc_se")
    lines = [f"{row['label']} ({row['stage']}): run {row.get('run_name') or row.get('run_id', '')}",
             f"test accuracy {acc:.4f}" + (f" \u00b1 {Z * se:.4f}" if se else ""),
             f"{title}: {row[key]:,.4g}"]
    if row.get("hparams"):
        lines.append(", ".join(f"{k}={v}" for k, v in row["hparams"].items()))
    return "\n".join(lines)


def pareto_axes(cmp: Comparison):
    """The figure of ``pareto_figure`` (test accuracy against each energy axis: front opaque and
    joined, dominated runs faded, knee starred, the front's labels placed clear of each other and
    of the points) and its points: ``[(x, y, title)]`` in pixels from the top left."""
    from adjustText import adjust_text

    plt = _plt()
    rows = cmp.rows
    fig, axes = plt.subplots(1, len(AXES), figsize=(6 * len(AXES), 5), squeeze=False, dpi=DPI)
    colors = family_colors(rows)
    stages = sorted({r["stage"] for r in rows})
    # Fixed margins: tight_layout would draw the whole figure once more just to measure it.
    fig.subplots_adjust(left=0.045, right=0.99, bottom=0.11, top=0.93, wspace=0.16)
    placed: list[tuple[object, list[int], str, str]] = []
    for ax, (key, title, axis) in zip(axes[0], AXES, strict=True):
        lines = _front_lines(cmp, axis)
        on = set(cmp.fronts[axis])
        usable = [i for i, r in enumerate(rows) if r[key] is not None and r[key] > 0 and r["test_acc"] is not None]
        sets: dict[tuple, list[int]] = {}
        for i in usable:
            sets.setdefault((rows[i]["family"], rows[i]["stage"], i in on), []).append(i)
        for (family, stage, is_front), idx in sets.items():
            xs, ys = [rows[i][key] for i in idx], [rows[i]["test_acc"] for i in idx]
            noise = [rows[i].get(f"noise_{axis}") or (None, None) for i in idx]
            yerr = [Z * (q or 0.0) for q, _ in noise]
            xerr = [Z * (c or 0.0) for _, c in noise]
            # a bar never reaches zero or below on the log axis
            xerr_lo = [min(e, 0.9 * x) for e, x in zip(xerr, xs, strict=True)]
            if any(yerr) or any(xerr):
                ax.errorbar(xs, ys, xerr=[xerr_lo, xerr], yerr=yerr, fmt="none", ecolor=colors[family], lw=0.8,
                            alpha=0.8 if is_front else 0.2, zorder=2)
            ax.scatter(xs, ys, c=colors[family], marker=STAGE_MARKERS.get(stage, "x"),
                       s=60 if is_front else 30, alpha=1.0 if is_front else 0.25,
                       edgecolors="k" if is_front else "none", linewidths=0.6, zorder=3 if is_front else 2)
        labelled: list[int] = []
        for n, (_, front, knees) in enumerate(lines):
            if not front:
                continue
            ax.plot([rows[i][key] for i in front], [rows[i]["test_acc"] for i in front],
                    ls=FRONT_STYLES[n % len(FRONT_STYLES)], color="k", lw=1, zorder=1)
            labelled += front if len(front) <= MAX_LABELS else [front[0], front[-1], *knees]
            if knees:
                ax.scatter([rows[k][key] for k in knees], [rows[k]["test_acc"] for k in knees], marker="*", s=320,
                           c="gold", edgecolors="k", linewidths=0.8, zorder=4)
        if usable:
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
            ax.margins(x=0.08, y=0.08)
        else:
            ax.text(0.5, 0.5, "no model has this measurement", transform=ax.transAxes, ha="center", color="#777777")
        ax.set_xlabel(f"{title}, log scale")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"Accuracy vs {title.split(' (')[0]}", fontsize=11)
        ax.grid(alpha=0.3, which="both")
        placed.append((ax, usable, key, title))
        texts = [ax.text(rows[i][key], rows[i]["test_acc"], rows[i]["label"], fontsize=7, zorder=5)
                 for i in dict.fromkeys(labelled)]
        if texts:  # clear of each other and of the front's points, joined to their point
            shown = sorted(on.intersection(usable))
            adjust_text(texts, x=[rows[i][key] for i in shown], y=[rows[i]["test_acc"] for i in shown], ax=ax,
                        expand=(1.15, 1.4), time_lim=1,
                        arrowprops={"arrowstyle": "-", "color": "#666666", "lw": 0.5})
    _legend(axes[0][0], colors, stages, [name for name, _, _ in _front_lines(cmp, AXES[0][2])])
    height = fig.get_figheight() * DPI
    points = []
    for ax, usable, key, title in placed:
        ax.get_xlim(), ax.get_ylim()  # settles the autoscaled limits that transData maps through
        for i in usable:
            x, y = ax.transData.transform((rows[i][key], rows[i]["test_acc"]))
            points.append((round(float(x), 1), round(float(height - y), 1), _hover_title(rows[i], key, title)))
    return fig, points


def pareto_figure(cmp: Comparison, path: Path) -> tuple[Path, dict]:
    """``pareto_axes`` saved as a PNG at ``path``; returns it with its points (``render`` lays
    them over the image as hover titles): ``{"width", "height", "points": [(x, y, title)]}``."""
    fig, points = pareto_axes(cmp)
    fig.savefig(path, dpi=DPI)
    hover = {"width": fig.get_figwidth() * DPI, "height": fig.get_figheight() * DPI, "points": points}
    _plt().close(fig)
    return path, hover


# Rows of a family's size series: its baseline and its sweep sizes (same training budget).
SERIES_STAGES = ("train", "sweep")


def size_figure(cmp: Comparison, path: Path) -> Path:
    """Accuracy and training energy against parameters and inference FLOPs per sample, one
    colour per family; a family's baseline and sweep sizes of one group joined by a line, other
    models (tuned, compressed) as open markers."""
    plt = _plt()
    rows = cmp.rows
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), squeeze=False)
    panels = [("params", "parameters"), ("flops_per_sample_inference", "inference FLOPs per sample")]
    ys = [("test_acc", "test accuracy", False), ("train_energy_j", "training energy (J, log scale)", True)]
    colors = family_colors(rows)
    for row_i, (ykey, ytitle, ylog) in enumerate(ys):
        for col_i, (xkey, xtitle) in enumerate(panels):
            ax = axes[row_i][col_i]
            drawn = False
            for family, color in colors.items():
                pts = [r for r in rows if r["family"] == family and r[xkey] and r[ykey] is not None
                       and (not ylog or r[ykey] > 0)]
                series: dict[str, list[dict]] = {}
                for r in pts:
                    if r["stage"] in SERIES_STAGES:
                        series.setdefault(r["group"], []).append(r)
                xs, ys = [], []  # every series of the family in one line, NaN-separated: one artist
                for members in series.values():
                    members.sort(key=lambda r: r[xkey])
                    xs += [r[xkey] for r in members] + [math.nan]
                    ys += [r[ykey] for r in members] + [math.nan]
                if xs:
                    ax.plot(xs, ys, "-o", color=color, ms=5, lw=1.2, alpha=0.85)
                others = [r for r in pts if r["stage"] not in SERIES_STAGES]
                if others:
                    ax.scatter([r[xkey] for r in others], [r[ykey] for r in others], facecolors="none",
                               edgecolors=color, s=30, alpha=0.7)
                drawn = drawn or bool(pts)
            if drawn:
                ax.set_xscale("log")
                _log_axis(ax.xaxis)
                if ylog:
                    ax.set_yscale("log")
                    _log_axis(ax.yaxis)
            else:
                ax.text(0.5, 0.5, "not measured for the selected models", transform=ax.transAxes,
                        ha="center", color="#777777")
            ax.set_xlabel(f"{xtitle}, log scale")
            ax.set_ylabel(ytitle)
            ax.grid(alpha=0.3, which="both")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", color=c, label=f"{f}: baseline and sweep sizes") for f, c in colors.items()]
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="#555555", label="other models (tuned, compressed)"))
    axes[0][0].legend(handles=handles, fontsize=8, loc="lower right")
    fig.suptitle("Model size: accuracy and training energy against parameters and FLOPs", fontsize=12)
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.07, top=0.94, wspace=0.2, hspace=0.22)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
