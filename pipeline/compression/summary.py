"""The report's compression section, from the compress stage's metrics files (never retraining).

``compression_section(params, out_dir)`` writes two plots into ``out_dir`` (test accuracy versus
inference energy per 1,000 predictions, and versus size on disk; originals and variants, Pareto
front drawn, dominated points faded) and returns a Markdown section: a table per compressed model
with the pay-back point of every variant, and what the numbers mean on this hardware.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import paths
from pipeline.config import Params
from pipeline.pareto import pareto_front

ENERGY_PLOT = "compression_accuracy_vs_energy.png"
SIZE_PLOT = "compression_accuracy_vs_size.png"
_MARKERS = {"original": "*", "quant_dynamic": "v", "quant_static": "^", "prune_global": "s",
            "prune_structured": "D", "distill": "o", "scratch": "P", "stacked": "X"}


def _technique_of(variant: str) -> str:
    """``prune_structured-0.5+quant_static-int8`` -> ``prune_structured+quant_static``."""
    return "+".join(part.split("-")[0] for part in variant.split("+"))


def _kind(technique: str) -> str:
    """Marker/legend group: stacked variants (``prune_structured+quant_static``) share one."""
    return "stacked" if "+" in technique else technique


def load_rows(params: Params) -> list[dict]:
    """One row per original (the compress stage's in-process reference) and per variant."""
    rows = []
    for family in params.families:
        for source in params.compress.sources:
            path = paths.compress_metrics(family, source)
            if not path.is_file():
                continue
            m = json.loads(path.read_text())
            ref = m["reference"]
            evaluated = paths.evaluate_metrics(family, source)
            ev = json.loads(evaluated.read_text()) if evaluated.is_file() else {}
            method = m.get("energy_method")  # one meter measured the original and its variants
            rows.append({"model": f"{family}-{source}", "family": family, "source": source,
                         "technique": "original", "level": "", "energy_method": method, **ref,
                         "evaluate_energy_per_1k_j": ev.get("energy_per_1k_j"), "evaluate_test_acc": ev.get("test_acc")})
            for name, v in m["variants"].items():
                rows.append({"model": f"{family}-{source} {name}", "family": family, "source": source, "variant": name,
                             "energy_method": method, **v})
            for name, reason in m.get("skipped", {}).items():
                rows.append({"model": f"{family}-{source} {name}", "family": family, "source": source,
                             "variant": name, "technique": _technique_of(name), "skipped": reason})
    return rows


def _plot(rows: list[dict], cost_key: str, xlabel: str, title: str, path: Path) -> set[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r.get(cost_key) and r.get("test_acc") is not None]
    front = pareto_front([(r["test_acc"], r[cost_key]) for r in pts])
    on_front = {pts[i]["model"] for i in front}
    colors = {f: plt.cm.tab10(i) for i, f in enumerate(dict.fromkeys(r["family"] for r in pts))}
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in pts:
        front_pt = r["model"] in on_front
        ax.scatter(r[cost_key], r["test_acc"], marker=_MARKERS.get(_kind(r["technique"]), "o"), color=colors[r["family"]],
                   s=150 if r["technique"] == "original" else 55, alpha=1.0 if front_pt else 0.3,
                   edgecolors="black" if front_pt else "none", zorder=3)
    if len(front) > 1:
        xs = [pts[i][cost_key] for i in front]
        ys = [pts[i]["test_acc"] for i in front]
        ax.step(xs, ys, where="post", color="black", lw=1, ls="--", zorder=2)
    for i in front:
        r = pts[i]
        ax.annotate(r["model"], (r[cost_key], r["test_acc"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=m, ls="", color="grey", label=t.replace("_", " "))
               for t, m in _MARKERS.items() if any(_kind(r["technique"]) == t for r in pts)]
    handles += [Line2D([], [], marker="s", ls="", color=c, label=f) for f, c in colors.items()]
    handles.append(Line2D([], [], color="black", ls="--", label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=2)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return on_front


def _fmt(value, spec: str, none: str = "n/a") -> str:
    if value is None:
        return none
    return spec.format(value)


def _payback(r: dict) -> str:
    if r["technique"] == "original":
        return ""
    if r.get("payback_predictions") is not None:
        n = r["payback_predictions"]
        return f"{n:,.0f}" if n < 1e6 else f"{n:.2e}"
    return "never" if r.get("payback") else "n/a"


def _ratio_text(r: dict) -> str:
    """Median per-round ratio, with its quartiles where there were several rounds."""
    text = _fmt(r.get("energy_ratio"), "{:.2f}")
    if r.get("energy_ratio_q1") is not None and r.get("energy_ratio_q3") is not None:
        text += f" ({r['energy_ratio_q1']:.2f}–{r['energy_ratio_q3']:.2f})"
    return text


def _level_note(r: dict) -> str:
    if r["technique"] == "original":
        notes = []
        if r.get("energy_per_1k_j_spread") is not None:
            notes.append(f"{r.get('energy_rounds', '?')} readings, interquartile spread "
                         f"{r['energy_per_1k_j_spread']:.0%}")
        if r.get("evaluate_energy_per_1k_j") is not None:
            notes.append(f"evaluate stage: {r['evaluate_energy_per_1k_j']:.4f} J/1k, test acc {r['evaluate_test_acc']:.4f}")
        return "; ".join(notes)
    if r["technique"] == "prune_global" and r.get("sparsity") is not None:
        return f"{r['sparsity']:.1%} of weights zero"
    if r["technique"] == "prune_structured" and r.get("units_removed_fraction") is not None:
        return f"{r['units_before']}→{r['units_after']} units/layer"
    if r["technique"].split("+")[0] in ("distill", "scratch"):
        return f"student val/acc {r['student_val_acc']:.3f}" if r.get("student_val_acc") is not None else ""
    return ""


def _table(rows: list[dict], front_energy: set[str], front_size: set[str]) -> list[str]:
    head = ("| model | technique | level | test acc | Δ acc (points) | macro-F1 | params (non-zero / total) | "
            "size (KB) | gzip (KB) | latency (ms) | throughput (/s) | J / 1k pred | energy ratio (quartiles) | "
            "compression (J) | pay-back (predictions) | note |")
    out = [head, "|" + "---|" * 16]
    for r in rows:
        if r.get("skipped"):
            out.append(f"| {r['model']} | {r['technique']} | | skipped | | | | | | | | | | | | {r['skipped']} |")
            continue
        name = r["model"] if r["technique"] == "original" else r["variant"]
        marks = ("E" if r["model"] in front_energy else "") + ("S" if r["model"] in front_size else "")
        name = f"**{name}**" + (f" ({marks})" if marks else "") if marks else name
        delta = "" if r["technique"] == "original" else f"{r['acc_delta'] * 100:+.1f}"
        ratio = "1" if r["technique"] == "original" else _ratio_text(r)
        out.append(" | ".join([
            f"| {name}", r["technique"], r.get("level", ""), f"{r['test_acc']:.4f}", delta,
            f"{r['test_f1_macro']:.4f}", f"{r['params_nonzero']:,} / {r['params_total']:,}",
            f"{r['size_bytes'] / 1024:.1f}", _fmt(r.get("size_bytes_gzip") and r["size_bytes_gzip"] / 1024, "{:.1f}"),
            f"{r['latency_ms_per_sample']:.3f}", f"{r['throughput_per_s']:,.0f}",
            _fmt(r.get("energy_per_1k_j"), "{:.4f}"), ratio,
            "" if r["technique"] == "original" else _fmt(r.get("compress_energy_j"), "{:.1f}"),
            _payback(r), _level_note(r)]) + " |")
    return out


def _ratios(rows: list[dict], technique: str) -> list[dict]:
    return [r for r in rows if r["technique"] == technique and r.get("energy_ratio") is not None]


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if hi - lo < 0.005 else f"{lo:.2f}–{hi:.2f}"


MIN_EFFECT = 0.05  # a ratio within 5 % of 1 is no difference, however tight its quartiles


def _verdict(variants: list[dict]) -> str:
    """Energy ratios read with their own uncertainty: a variant saved (cost) energy when the upper
    (lower) quartile of its per-round ratios lies below 0.95 (above 1.05); otherwise the rounds
    show no difference beyond the noise."""
    groups: dict[str, list[str]] = {"less energy": [], "more energy": [], "no difference beyond the noise": []}
    for r in variants:
        ratio = r["energy_ratio"]
        q1, q3 = r.get("energy_ratio_q1", ratio), r.get("energy_ratio_q3", ratio)
        key = ("less energy" if q3 < 1 - MIN_EFFECT else
               "more energy" if q1 > 1 + MIN_EFFECT else "no difference beyond the noise")
        groups[key].append(f"{r['family']}-{r['source']} {ratio:.2f}")
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items() if v)


def _meaning(rows: list[dict]) -> list[str]:
    """What the measured numbers mean here; every figure quoted comes from the rows above."""
    lines = []
    refs = [r for r in rows if r["technique"] == "original"]
    spreads = [r["energy_per_1k_j_spread"] for r in refs if r.get("energy_per_1k_j_spread") is not None]
    methods = sorted({r.get("energy_method") for r in rows if r.get("energy_method")})
    if spreads:
        rounds = sorted({r.get("energy_rounds") for r in refs if r.get("energy_rounds")})
        threads = sorted({r.get("inference_threads") for r in refs if r.get("inference_threads")})
        lines.append(f"- **Noise.** Each original and its variants were measured in the same "
                     f"{'/'.join(map(str, rounds))} rounds, alternating, with {'/'.join(map(str, threads))} "
                     f"torch thread(s); an original's own readings vary by {min(spreads):.0%}–{max(spreads):.0%} "
                     f"(interquartile range over its rounds). A variant's energy ratio is the median of its "
                     f"per-round ratios to its original, and counts as a saving or a cost only when the "
                     f"quartiles of those ratios lie beyond ±{MIN_EFFECT:.0%}; the verdicts below do so.")
    named = ", ".join(f"`{m}`" for m in methods) or "none recorded"
    if any("cpu=estimate" in m for m in methods):
        lines.append(f"- **What energy means here** (method: {named}). Where the CPU has no hardware counter, "
                     "CodeCarbon estimates its power from this process's CPU load times the CPU's TDP and adds a "
                     "fixed RAM power, so energy per prediction follows time per prediction: such a variant saves "
                     "energy only if it runs faster at the evaluation batch size.")
    else:
        lines.append(f"- **What energy means here** (method: {named}): read from the hardware counters the "
                     "method names, so a variant can save energy without saving time.")
    g = _ratios(rows, "prune_global")
    if g:
        lines.append(f"- **Unstructured pruning.** Global magnitude pruning zeroes weights inside dense tensors, and "
                     f"dense CPU kernels multiply the zeros like any other number ({_verdict(g)}). The file "
                     f"on disk keeps its size (dense storage); only the gzip column shrinks. Sparse kernels or "
                     f"sparse storage would be needed to turn the zeros into savings.")
    st = _ratios(rows, "prune_structured")
    if st:
        lines.append(f"- **Structured pruning** removes whole neurons/channels/hidden units, leaving a smaller dense "
                     f"model that dense kernels run with less work ({_verdict(st)}).")
    qd = _ratios(rows, "quant_dynamic")
    if qd:
        sizes = _span([r["size_ratio"] for r in qd if r.get("size_ratio") is not None] or [1.0])
        lines.append(f"- **Dynamic int8 quantization** stores the weights of the layers it covers as int8 (size "
                     f"ratio {sizes}) and quantizes activations on every call ({_verdict(qd)}); it can "
                     f"only pay where int8 matrix products save more than that per-call quantization costs.")
    qs = _ratios(rows, "quant_static")
    if qs:
        static_families = ", ".join(sorted({r["family"] for r in qs}))
        lines.append(f"- **Static int8 quantization** (calibrated scales, fused Conv/Linear+ReLU, int8 activations "
                     f"between layers; only families whose every layer has an eager int8 kernel, here "
                     f"{static_families}): {_verdict(qs)}.")
    d = _ratios(rows, "distill")
    if d:
        pairs = []
        for r in d:
            twin = next((t for t in rows if t["technique"] == "scratch" and t["family"] == r["family"]
                         and t["source"] == r["source"] and t.get("level") == r.get("level")), None)
            if twin:
                pairs.append(f"{r['family']}-{r['source']} {r['test_acc']:.3f} vs {twin['test_acc']:.3f}")
        lines.append(f"- **Distillation** trains a smaller student ({_verdict(d)}). The teacher's benefit is "
                     f"the test accuracy of the distilled student against the same student trained from labels "
                     f"alone with the same seed and budget: {'; '.join(pairs)}.")
    lines.append("- **Pay-back** is the compression's own energy (quantizing and calibrating, fine-tuning, teacher "
                 "outputs, student training) divided by the inference energy it saves per prediction; \"never\" "
                 "where it saves none, or none beyond the noise (the upper quartile of its paired energy "
                 "ratios is at or above 1).")
    return lines


def compression_section(params: Params, out_dir: Path) -> str:
    """Markdown section on the compress stage's variants, plots written into ``out_dir``; "" when
    no compress metrics exist."""
    rows = load_rows(params)
    measured = [r for r in rows if not r.get("skipped")]
    if not measured:
        return ""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    front_e = _plot(measured, "energy_per_1k_j", "inference energy per 1,000 predictions (J, log scale)",
                    "Compression: accuracy versus inference energy", out_dir / ENERGY_PLOT)
    front_s = _plot(measured, "size_bytes", "size on disk (bytes, log scale)",
                    "Compression: accuracy versus size on disk", out_dir / SIZE_PLOT)
    lines = [
        "## Compression: quantization, pruning, distillation",
        "",
        "Variants made by the compress stage from each trained model and measured exactly like the originals "
        "(held-out test split, latency at batch 1, throughput and energy at the evaluation batch size). "
        "The original row is the same model measured in the same process and the same alternating rounds as "
        "its variants. Δ acc is in accuracy points against that original; "
        "**bold** rows lie on the Pareto front of accuracy versus inference energy (E) or size on disk (S), "
        "across all families.",
        "",
        *_table(rows, front_e, front_s),
        "",
        f"![accuracy versus inference energy per 1,000 predictions]({ENERGY_PLOT})",
        f"![accuracy versus size on disk]({SIZE_PLOT})",
        "",
        "What the numbers mean on this hardware:",
        "",
        *_meaning(measured),
        "",
    ]
    return "\n".join(lines)
