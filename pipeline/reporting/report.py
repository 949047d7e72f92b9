"""The ``report`` stage: compare the families on quality and cost from the stages' metrics files
(never retraining): a Markdown table, an accuracy-versus-energy scatter with its Pareto front, and
the CSV that ``dvc plots`` draws."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline import paths
from pipeline.config import Params
from pipeline.data.sources import DataError
from pipeline.reporting.pareto import pareto_front

COLUMNS = [
    ("model", "model", "{}"),
    ("test_acc", "test acc", "{:.4f}"),
    ("test_f1_macro", "macro-F1", "{:.4f}"),
    ("train_energy_j", "train energy (J)", "{:.1f}"),
    ("train_energy_wh", "train energy (Wh)", "{:.4f}"),
    ("train_emissions_g", "train CO2eq (g)", "{:.4f}"),
    ("train_duration_s", "train time (s)", "{:.1f}"),
    ("search_energy_j", "search energy (J)", "{:.1f}"),
    ("params", "params", "{:,}"),
    ("flops_per_sample_inference", "FLOPs/sample", "{:,.0f}"),
    ("flops_per_joule", "FLOPs/J", "{:.3g}"),
    ("energy_to_target_j", "energy to target (J)", "{:.1f}"),
    ("energy_per_1k_j", "inference J/1k pred", "{:.4f}"),
    ("energy_method", "energy method", "{}"),
]


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: metrics file not found; run the stage that writes it first")
    return json.loads(path.read_text())


def _row(family: str, variant: str, t: dict, e: dict, search: dict | None) -> dict:
    return {
        "model": f"{family}-{variant}",
        "family": family,
        "variant": variant,
        "test_acc": e["test_acc"],
        "test_f1_macro": e["test_f1_macro"],
        "val_acc": t["val_acc"],
        "train_energy_j": t.get("energy_j"),
        "train_energy_wh": None if t.get("energy_j") is None else t["energy_j"] / 3600,
        "train_emissions_g": None if t.get("emissions_kg") is None else t["emissions_kg"] * 1000,
        "train_duration_s": t.get("duration_s"),
        "search_energy_j": None if search is None else search.get("search_energy_j"),
        "params": t["params"],
        "flops_per_sample_inference": t.get("flops_per_sample_inference"),
        "flops_per_joule": t.get("flops_per_joule"),
        "energy_to_target_j": t.get("energy_to_target_j"),
        "energy_per_1k_j": e.get("energy_per_1k_j"),
        "latency_ms_per_sample": e["latency_ms_per_sample"],
        "energy_method": t.get("energy_method", "unavailable"),
    }


def collect_rows(params: Params) -> list[dict]:
    """One row per trained model: each family's baseline, and its tuned model where the search
    stage ran (its training energy is the refit's; the search's own energy is a column)."""
    rows = []
    for family in params.families:
        t, e = _read(paths.train_metrics(family)), _read(paths.evaluate_metrics(family, paths.BASELINE))
        rows.append(_row(family, paths.BASELINE, t, e, None))
        tuned_eval = paths.evaluate_metrics(family, paths.TUNED)
        if tuned_eval.is_file():
            tune_m = _read(paths.tune_metrics(family))
            rows.append(_row(family, paths.TUNED, tune_m, _read(tuned_eval), tune_m))
    return rows


def _fmt(value, spec: str) -> str:
    if value is None:
        return "n/a"
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def markdown(rows: list[dict], front: set[str], target: float) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = []
    for r in sorted(rows, key=lambda r: -r["test_acc"]):
        cells = [_fmt(r[key], spec) for key, _, spec in COLUMNS]
        if r["model"] in front:
            cells[0] = f"**{cells[0]}**"
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        "# Accuracy versus energy",
        "",
        "Test accuracy on the held-out split against the energy spent training each family "
        "(measured by CodeCarbon; the method column says how). `-tuned` models come from the Optuna search: "
        "their training energy is the refit of the chosen trial, and \"search energy\" is what all the trials "
        "together cost (pruned and failed ones included). **Bold** models are on the Pareto front: no other "
        "model is both at least as accurate and cheaper to train.",
        f"\"energy to target\" is the training energy spent until validation accuracy first reached {target}"
        " (n/a: never reached). FLOPs/J counts the FLOPs of all training and validation passes per joule of "
        "training energy; n/a where torch's FLOP counter cannot count a layer.",
        "",
        head, sep, *body, "",
        "![accuracy versus training energy](accuracy_vs_energy.png)",
        "",
    ])


def scatter(rows: list[dict], front_ids: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [(r["train_energy_j"], r["test_acc"]) for r in rows]
    for i, (r, (x, y)) in enumerate(zip(rows, pts)):
        on_front = i in front_ids
        ax.scatter(x, y, s=70, alpha=1.0 if on_front else 0.35, zorder=3)
        ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    if len(front_ids) > 1:
        ax.plot([pts[i][0] for i in front_ids], [pts[i][1] for i in front_ids], "k--", lw=1, label="Pareto front")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("training energy (J, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy versus training energy")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(params: Params) -> Path:
    rows = collect_rows(params)
    measured = [i for i, r in enumerate(rows) if r["train_energy_j"] is not None]
    front_local = pareto_front([(rows[i]["test_acc"], rows[i]["train_energy_j"]) for i in measured])
    front_ids = [measured[i] for i in front_local]
    front = {rows[i]["model"] for i in front_ids}
    out = paths.REPORTS_DIR
    (out / "plots").mkdir(parents=True, exist_ok=True)
    with (out / "plots" / "models.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0].keys(), "pareto"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "pareto": r["model"] in front})
    if measured:
        scatter([rows[i] for i in measured], [measured.index(i) for i in front_ids], out / "accuracy_vs_energy.png")
    report = out / "report.md"
    report.write_text(markdown(rows, front, params.train.target_val_acc))
    return report
