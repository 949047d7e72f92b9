"""The comparison as text: a Markdown summary and one self-contained HTML page.

The HTML embeds its figures as base64 ``data:`` URIs and its style inline: it loads nothing, so
it reads the same in a browser with no network, from a mail attachment or from a CI artifact.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.reporting.compare import AXES, Comparison
from pipeline.uncertainty import Z

# (row key, column title, format) of the per-family tables. Other units (Wh) and the energy method
# are in plots/models.csv: the method is stated once for all rows, or per condition ("measured").
COLUMNS = [
    ("label", "model", "{}"),
    ("stage", "stage", "{}"),
    ("fronts", "front", "{}"),
    ("test_acc", "test acc", "{:.4f}"),
    ("test_f1_macro", "macro-F1", "{:.4f}"),
    ("train_energy_j", "train energy (J)", "{:,.1f}"),
    ("train_energy_bounds", "method bounds (J)", "{}"),
    ("train_emissions_g", "train CO2eq (g)", "{:.4f}"),
    ("train_duration_s", "train time (s)", "{:.1f}"),
    ("search_energy_j", "search energy (J)", "{:,.1f}"),
    ("energy_per_1k_j", "inference J/1k pred", "{:.4f}"),
    ("params", "params", "{:,.0f}"),
    ("flops_per_sample_inference", "FLOPs per sample", "{:,.0f}"),
    ("train_flops_total", "train FLOPs", "{:.3g}"),
    ("flops_per_joule", "FLOPs per J", "{:.3g}"),
]
AXIS_LETTER = {"train": "T", "inference": "I", "search": "S"}
MAX_FRONT_LISTED = 10  # front models named in the summary's sentence per axis
KNEE = "\u2605"  # a star


@dataclass(frozen=True)
class Section:
    """An extra section of the report (e.g. a stage's own details), written in Markdown."""

    title: str
    markdown: str
    # Where the section's relative image links point; the HTML page embeds those images.
    base: Path | None = None


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str
    # Where its points are and what each is (figures.pareto_figure): hover titles on the page.
    hover: dict | None = None


def fmt(value, spec: str) -> str:
    if value is None or value == "":
        return "n/a"
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def _fronts_cell(r: dict) -> str:
    marks = []
    for _, _, axis in AXES:
        if r.get(f"front_{axis}"):
            marks.append(AXIS_LETTER[axis] + (KNEE if r.get(f"knee_{axis}") else ""))
    return " ".join(marks)


# Cells that show their figure's noise: (row key, axis whose noise it is, 0 quality / 1 cost).
NOISY = {"test_acc": ("train", 0), "train_energy_j": ("train", 1), "energy_per_1k_j": ("inference", 1)}


def columns(cmp: Comparison) -> list[tuple[str, str, str]]:
    """The tables' columns: with several conditions kept apart or mixed, which one each row is."""
    if len(cmp.conditions) < 2:
        return COLUMNS
    return [*COLUMNS[:3], ("condition_id", "measured", "{}"), *COLUMNS[3:]]


def _noisy(r: dict, key: str, spec: str) -> str:
    """A figure with its 95 % half-width (Z standard errors), and its count where it is a mean."""
    text = fmt(r.get(key), spec)
    axis, part = NOISY[key]
    se = (r.get(f"noise_{axis}") or (None, None))[part]
    if r.get(key) is not None and se:
        text += " \u00b1 " + fmt(Z * se, spec)
    if key == "train_energy_j" and (r.get("train_energy_n") or 0) > 1:
        text += f" (n={r['train_energy_n']})"
    return text


def _cells(r: dict, cols: Sequence[tuple[str, str, str]] = COLUMNS) -> list[str]:
    low, high = r.get("train_energy_low_j"), r.get("train_energy_high_j")
    row = {**r, "fronts": _fronts_cell(r) or "-",
           "train_energy_bounds": None if low is None or high is None else f"{low:,.0f}-{high:,.0f}"}
    return [_noisy(row, key, spec) if key in NOISY else fmt(row.get(key), spec) for key, _, spec in cols]


def _on_any_front(r: dict) -> bool:
    return any(r.get(f"front_{axis}") for _, _, axis in AXES)


def _by_family(cmp: Comparison) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in cmp.rows:  # already sorted by accuracy
        out.setdefault(r["family"], []).append(r)
    return dict(sorted(out.items()))


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="seconds")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def families_of(cmp: Comparison) -> list[str]:
    return sorted({r["family"] for r in cmp.rows})


def scope_text(cmp: Comparison) -> str:
    groups, families = cmp.groups, families_of(cmp)
    shown = ", ".join(groups[:12]) + (f" and {len(groups) - 12} more" if len(groups) > 12 else "")
    return (f"{_count(len(cmp.rows), 'model')} of {_count(len(families), 'family', 'families')} "
            f"({', '.join(families)}) from {_count(cmp.runs_read, 'run')} of MLflow experiment(s) "
            f"{', '.join(cmp.experiments)}; {_count(len(groups), 'group')} (DVC experiment, else git commit): "
            f"{shown}. Selection: {cmp.filters.describe()}. Generated {_when(cmp.generated_ms)}.")


def _knee_lines(cmp: Comparison) -> list[tuple[str, str]]:
    """(axis title, sentence) per energy axis, and per condition when conditions are kept apart:
    its knee, the models within the noise of it, and its front from cheap to accurate."""
    out = []
    apart = len(cmp.conditions) > 1 and not cmp.filters.mix
    for key, title, axis in AXES:
        parts = ([(f"{title} ({f'C{n}'})", cond.knees.get(axis), [i for i in cmp.fronts[axis] if i in set(cond.rows)])
                  for n, cond in enumerate(cmp.conditions, 1)] if apart
                 else [(title, cmp.knees.get(axis), cmp.fronts[axis])])
        for name, k, front in parts:
            if not front or k is None:
                out.append((name, "no model has this measurement."))
                continue
            kr = cmp.rows[k]
            steps = ", ".join(f"{cmp.rows[i]['label']} ({cmp.rows[i]['test_acc']:.4f} at {fmt(cmp.rows[i][key], '{:.4g}')} J)"
                              for i in front[:MAX_FRONT_LISTED])
            if len(front) > MAX_FRONT_LISTED:
                steps += f", and {len(front) - MAX_FRONT_LISTED} more (column \"front\" of the tables)"
            text = f"knee {KNEE} **{kr['label']}**: test accuracy {kr['test_acc']:.4f} for {fmt(kr[key], '{:.4g}')} J."
            tied = kr.get(f"ties_{axis}") or []
            if tied:
                text += (f" Within the noise of it on both axes, so not ranked against it: {', '.join(tied[:6])}"
                         f"{', ...' if len(tied) > 6 else ''}.")
            out.append((name, f"{text} Front, cheapest first: {steps}."))
    return out


# What each part of an ``energy_method`` tag (pipeline/energy.py) means.
METHOD_PARTS = {
    "cpu=rapl": "CPU from Intel RAPL's hardware energy counter",
    "cpu=estimate:cpu_load*tdp": "CPU estimated from this process's CPU load times the CPU's TDP",
    "cpu=estimate:constant_tdp": "CPU estimated as a constant share of the CPU's TDP",
    "cpu=intel_power_gadget": "CPU from Intel Power Gadget",
    "cpu=windows_emi": "CPU from Windows' energy meter interface",
    "ram=estimate": "RAM estimated by CodeCarbon's power model",
    "gpu=nvml": "GPU from NVML's energy counter read by CodeCarbon (the whole device, other processes included)",
    "gpu=zeus:nvml_counter": "GPU from NVML's energy counter read by Zeus (the whole device, other processes included)",
    "gpu=zeus:nvml_power_sampling": "GPU power sampled by Zeus (a GPU older than Volta, without an energy counter)",
    "gpu=none": "no GPU",
    "unavailable": "not measured, CodeCarbon could not: no energy figures",
    "unknown": "no energy_method tag on the run",
}


def _method_meaning(method: str) -> str:
    """``cpu=rapl;ram=estimate;gpu=none`` in words; a sum of readings (``a+b``) part by part."""
    readings = []
    for reading in method.split("+"):
        parts = [p.strip() for p in reading.split(";") if p.strip()]
        readings.append(", ".join(METHOD_PARTS.get(p, f"`{p}`") for p in parts))
    return " + ".join(readings)


def _is_estimate(method: str) -> bool:
    return "estimate" in method


def method_note(cmp: Comparison) -> str:
    """How the selected rows' energy was measured: every method they carry, with its count."""
    counts: dict[str, int] = {}
    for r in cmp.rows:
        m = r.get("energy_method") or "unknown"
        counts[m] = counts.get(m, 0) + 1
    methods = sorted(counts, key=lambda m: (-counts[m], m))
    head = ("Costs are CodeCarbon's measurements, each by its model's own run (its training, or a variant's "
            "compression); the energy method of each model is in plots/models.csv.")
    if len(methods) == 1:
        m = methods[0]
        text = (f"{head} Every model here carries one method, `{m}`: {_method_meaning(m)}.")
        if _is_estimate(m):
            text += (" Part of it is an estimate, not a counter reading: compare these figures with each other, "
                     "not with figures measured another way or on another machine.")
        return text
    listed = "; ".join(f"`{m}` ({_count(counts[m], 'model')}: {_method_meaning(m)})" for m in methods)
    text = f"{head} The models here carry {len(methods)} methods: {listed}."
    return text


def conditions_note(cmp: Comparison) -> str | None:
    """Which conditions (machine, energy method, alone or beside other work) the rows were
    measured under, and whether they share fronts."""
    conds = cmp.conditions
    if len(conds) < 2:
        if not conds:
            return None
        c = conds[0]
        return (f"Every model here was measured under one condition: {c.label} (machine, energy method, and whether "
                "other work ran beside it; tags `host_*`, `energy_method`, metrics `energy/others_cores`).")
    listed = "; ".join(f"**C{n}** {c.label} ({_count(len(c.rows), 'model')})" for n, c in enumerate(conds, 1))
    if cmp.filters.mix:
        return (f"The models were measured under {len(conds)} conditions: {listed}. `--mix` puts them on one front: "
                "column \"measured\" marks each model's condition, and each method's bounds count as noise, since "
                "they do not cancel between methods or machines.")
    return (f"The models were measured under {len(conds)} conditions, which are not comparable: {listed}. Each has "
            "its own fronts and knee (column \"measured\"; the figures draw one front line per condition). `--mix` "
            "puts them on one front.")


def noise_note(cmp: Comparison) -> str:
    """What the \u00b1 figures are, with what this selection holds."""
    text = (f"**\u00b1** is {Z:g} standard errors (95 %). Test accuracy's from the test split's size (binomial). "
            "Training energy's from the repeats of a model's configuration (`train.repeats`, or reruns of the same "
            "configuration: n = the runs averaged), else from the coefficient of variation pooled over the repeated "
            "configurations of its condition")
    pooled = [(f"C{n}", c.noise_cv) for n, c in enumerate(cmp.conditions, 1) if c.noise_cv is not None]
    if pooled:
        text += " (here: " + "; ".join(f"{name + ' ' if len(cmp.conditions) > 1 else ''}{cv:.1%} from "
                                        f"{_count(k, 'configuration')}" for name, (cv, k) in pooled) + ")"
    missing = len(cmp.conditions) - len(pooled)
    if missing:
        text += (f"; {'no' if not pooled else 'in ' + _count(missing, 'condition') + ', no'} configuration was run "
                 "more than once, so that noise is not measured and those energies are compared as exact "
                 "(set `train.repeats: 3` to measure it)")
    text += (". Inference energy's over the evaluation's rounds. **Method bounds** are where the absolute figure "
             "lies by the bounds of the method that measured it (docs/energy.md): shared by runs measured the same "
             "way on the same machine, so they widen absolute figures, not the differences between such runs.")
    return text


def _axis_gaps(cmp: Comparison) -> str:
    """Which models take no part in each front (no measured cost), from the rows."""
    gaps = []
    for key, title, _ in AXES:
        n = sum(1 for r in cmp.rows if r.get(key) is None or not r[key] > 0 or r.get("test_acc") is None)
        if n:
            gaps.append(f"{_count(n, 'model')} without {title.split(' (')[0]}")
    return ("here: " + "; ".join(gaps)) if gaps else "here every model has all three measurements"


def energy_note(cmp: Comparison) -> str:
    """What the training and search energy columns add up, with the exceptions the rows hold."""
    rows = cmp.rows
    text = "**Training energy** is the training run's own"
    compressed = [r for r in rows if r["stage"] == "compress"]
    if compressed:
        text += ("; a compressed variant adds its compression cost to its source's training energy (a `scratch` "
                 "student, trained from labels alone, counts its own)")
        missing = [r for r in compressed if r.get("source_missing")]
        if missing:
            text += (f"; {_count(len(missing), 'compressed variant')} whose source run was not read "
                     f"({', '.join(r['label'] for r in missing[:5])}{', ...' if len(missing) > 5 else ''}) "
                     f"{'counts its' if len(missing) == 1 else 'count their'} compression cost alone")
    text += ". "
    tuned = [r for r in rows if r["stage"] == "tune"]
    searched = [r for r in tuned if r.get("search_energy_j") is not None]
    if searched:
        text += (f"**Search energy** is what the whole Optuna search that chose a tuned model spent (every trial, "
                 f"pruned and failed ones included; read for {_count(len(searched), 'tuned model')} here); "
                 "**search + training** adds it to the training energy (models no search produced count their "
                 "training only).")
        if len(searched) < len(tuned):
            n = len(tuned) - len(searched)
            text += (f" {_count(n, 'tuned model')} without a search energy (study run not read) "
                     f"{'counts its' if n == 1 else 'count their'} training only.")
    elif tuned:
        text += (f"No search energy was read for the {_count(len(tuned), 'tuned model')} here (study runs not read): "
                 "**search + training** is their training energy alone.")
    else:
        text += "No model here came from a search: **search + training** energy equals training energy."
    return text


def flops_note(cmp: Comparison) -> str:
    """What the FLOPs columns count, and why some cells are n/a, from the rows."""
    rows = cmp.rows
    text = ("FLOPs per sample are counted by torch's FLOP counter for one inference; train FLOPs count every "
            "training and validation pass; FLOPs per J divides them by the training run's energy.")
    reasons: dict[str, int] = {}
    for r in rows:
        if r.get("flops_per_sample_inference") is None:
            note = r.get("flops_note") or ""
            why = note if note.startswith("not countable") else "not logged by the run"
            reasons[why] = reasons.get(why, 0) + 1
    if reasons:
        text += " FLOPs per sample n/a: " + "; ".join(f"{why} ({_count(n, 'model')})" for why, n in reasons.items()) + "."
    untrained: dict[str, int] = {}
    for r in rows:
        if r.get("train_flops_total") is None:
            untrained[r["stage"]] = untrained.get(r["stage"], 0) + 1
    if untrained:
        text += (" Train FLOPs n/a for " + ", ".join(f"{_count(n, 'model')} of stage {s}" for s, n in
                                                     sorted(untrained.items()))
                 + " (logged only by a training run whose every layer the counter could count).")
    return text


def groups_note(cmp: Comparison) -> str | None:
    """Several groups: the same model may appear once per group, measured in each."""
    if len(cmp.groups) < 2:
        return None
    seen: dict[tuple, set] = {}
    for r in cmp.rows:
        seen.setdefault((r["experiment"], r["model"], r["stage"]), set()).add(r["group"])
    repeated = sum(1 for g in seen.values() if len(g) > 1)
    if not repeated:
        return None
    return (f"{_count(repeated, 'model')} {'appears' if repeated == 1 else 'appear'} in more than one of the "
            f"{len(cmp.groups)} groups, each with its "
            "own measurement: one group's reading can be on a front while another's is not. Differences between "
            "groups come from changed code or params, or from measurement noise; `--dvc-exp` or `--commit` "
            "selects one group.")


def notes(cmp: Comparison) -> list[str]:
    """The report's "How to read it": definitions, and every statement about the data computed from it."""
    out = [
        method_note(cmp),
        *filter(None, [conditions_note(cmp)]),
        noise_note(cmp),
        energy_note(cmp),
        "**Pareto front** (letters: T training, I inference, S search + training): no other model is at least as "
        "accurate and at most as costly, with one of the two better beyond the noise (\u00b1). Equal energies: only "
        "the most accurate can be on the front; equal accuracies: only the cheapest; exact duplicates are all on it "
        "or all off it. A model that another beats only within the noise stays on the front, and front models "
        "within the noise of each other on both axes are ties, named beside the knee. Models whose energy was not "
        f"measured take no part ({_axis_gaps(cmp)}).",
        f"**Knee** {KNEE}: the front model nearest the ideal corner (best accuracy of the front at its least "
        "energy), accuracy scaled to [0, 1] and energy to [0, 1] on a log scale over the front; ties go to the "
        "cheaper model.",
        flops_note(cmp),
    ]
    groups = groups_note(cmp)
    if groups:
        out.append(groups)
    return out


def markdown(cmp: Comparison, figures: Sequence[Figure], extra: Sequence[Section] = ()) -> str:
    lines = ["# Accuracy versus energy", "", scope_text(cmp), "", "## Best trade-offs", ""]
    for title, text in _knee_lines(cmp):
        lines.append(f"- Against {title}: {text}")
    lines.append("")
    for fig in figures:
        lines += [f"![{fig.caption}]({fig.path.name})", ""]
    cols = columns(cmp)
    head = "| " + " | ".join(t for _, t, _ in cols) + " |"
    sep = "|" + "---|" * len(cols)
    lines += ["## Per family", "", "**Bold**: on at least one Pareto front.", ""]
    for family, rows in _by_family(cmp).items():
        lines += [f"### {family}", "", head, sep]
        for r in rows:
            cells = _cells(r, cols)
            if _on_any_front(r):
                cells[0] = f"**{cells[0]}**"
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    for sec in extra:
        lines += [f"## {sec.title}", "", sec.markdown.strip(), ""]
    lines += ["## How to read it", ""] + [f"- {n}" for n in notes(cmp)] + [""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1900px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}h3{margin-top:1.2em}
.table{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .3em;text-align:right;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0;white-space:normal;vertical-align:bottom;min-width:3.5em}
td small{color:#555;font-weight:400}
td:first-child,td:nth-child(2),td:last-child,th:first-child{text-align:left}
tr.front td{font-weight:600}tr.dominated td{color:#777}
figure{margin:1em 0}figure img{display:block;max-width:100%;height:auto;border:1px solid #eee}
.hover{position:relative;display:inline-block;max-width:100%}
.hover svg{position:absolute;left:0;top:0;width:100%;height:100%}
.hover circle{fill:transparent;pointer-events:all}.hover circle:hover{stroke:#000;stroke-width:1.5}
figcaption{font-size:.9em;color:#555}.scope{color:#444}code{background:#f4f4f4;padding:0 .2em}
"""


def _inline_md(text: str) -> str:
    """The little Markdown our own sentences use (**bold**, `code`), as HTML."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _md_to_html(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # not a declared dependency: fall back to preformatted text
        return f"<pre>{html.escape(text)}</pre>"
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _embed_images(page: str, base: Path | None) -> str:
    """Relative PNG links of a section replaced by data URIs, so the page stays self-contained."""
    import re

    if base is None:
        return page

    def embed(m):
        path = Path(base) / html.unescape(m.group(1))
        return f'src="{data_uri(path)}"' if path.suffix == ".png" and path.is_file() else m.group(0)

    return re.sub(r'src="(?!data:|https?:)([^"]+)"', embed, page)


def _hover_layer(hover: dict | None) -> str:
    """An SVG laid over a figure, scaled with it, with one invisible circle per point whose title
    the browser shows on hover (the point's run, figures and params): no script, no network."""
    if not hover:
        return ""
    circles = "".join(f'<circle cx="{x}" cy="{y}" r="6"><title>{html.escape(title)}</title></circle>'
                      for x, y, title in hover["points"])
    return (f'<svg viewBox="0 0 {hover["width"]:g} {hover["height"]:g}" preserveAspectRatio="none" '
            f'role="img" aria-label="points of the figure">{circles}</svg>')


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _stacked(cell: str) -> str:
    """A table cell as HTML, a figure's noise under it rather than beside it (the tables then fit
    a 1280 px page)."""
    value, sep, noise = cell.partition(" \u00b1 ")
    return html.escape(value) + (f"<br><small>\u00b1 {html.escape(noise)}</small>" if sep else "")


def html_page(cmp: Comparison, figures: Sequence[Figure], extra: Sequence[Section] = ()) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>Accuracy versus energy</title>", f"<style>{CSS}</style></head><body>",
             "<h1>Accuracy versus energy</h1>", f'<p class="scope">{e(scope_text(cmp))}</p>',
             "<h2>Best trade-offs</h2><ul>"]
    for title, text in _knee_lines(cmp):
        parts.append(f"<li>Against {e(title)}: {_inline_md(text)}</li>")
    parts.append("</ul>")
    for fig in figures:
        parts.append(f'<figure><div class="hover"><img src="{data_uri(fig.path)}" alt="{e(fig.caption)}">'
                     f"{_hover_layer(fig.hover)}</div><figcaption>{e(fig.caption)}</figcaption></figure>")
    parts.append("<h2>Per family</h2><p>Bold rows: on at least one Pareto front; "
                 "grey rows: on none (dominated, or not measured).</p>")
    cols = columns(cmp)
    head = "".join(f"<th>{e(t)}</th>" for _, t, _ in cols)
    for family, rows in _by_family(cmp).items():
        parts.append(f'<h3>{e(family)}</h3><div class="table"><table><thead><tr>{head}</tr></thead><tbody>')
        for r in rows:
            cls = "front" if _on_any_front(r) else "dominated"
            cells = "".join(f"<td>{_stacked(c)}</td>" for c in _cells(r, cols))
            parts.append(f'<tr class="{cls}" title="run {e(r["run_id"])}">{cells}</tr>')
        parts.append("</tbody></table></div>")
    for sec in extra:
        parts.append(f"<h2>{e(sec.title)}</h2>{_embed_images(_md_to_html(sec.markdown), sec.base)}")
    parts.append("<h2>How to read it</h2><ul>")
    parts += [f"<li>{_inline_md(n)}</li>" for n in notes(cmp)]
    parts.append("</ul></body></html>")
    return "\n".join(parts)
