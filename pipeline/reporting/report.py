"""``compare`` and the ``report`` stage: read MLflow (never retrain), compare every evaluated
model across families, searches, sweeps, compressed variants, DVC experiments and git commits, and
write ``reports/``:

- ``report.html``: one self-contained page (figures embedded, nothing loaded from the network);
- ``report.md``: the Markdown summary, beside the PNGs it shows;
- ``accuracy_vs_energy.png``: Pareto fronts of test accuracy against training energy, inference
  energy per 1,000 predictions and search + training energy (dominated models faded, knee starred);
- ``size_sweep.png``: accuracy and training energy against parameters and FLOPs per family;
- ``plots/models.csv``: one row per model, which ``dvc plots show`` draws as scatters.

The report stage is ``compare`` with its default scope: every finished run of the MLflow
experiment ``tracking.experiment_name``, the latest run per model in each DVC experiment or git
commit (see ``compare.py``).

Another stage's own details join both documents as extra sections, written in Markdown (the HTML
page renders them): ``write_outputs(cmp, out, extra_sections=[Section("Compression", text)])``.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from pipeline import paths
from pipeline.config import Params
from pipeline.reporting.compare import Comparison, Filters, compare
from pipeline.reporting.render import Figure, Section, html_page, markdown
from pipeline.reporting.store import filter_string, read_runs

CSV_FIELDS = [
    "label", "model", "family", "variant", "stage", "group", "experiment", "test_acc", "test_acc_se", "test_samples",
    "test_f1_macro", "val_acc", "train_energy_j", "train_energy_n", "train_energy_ci95_j", "train_energy_low_j",
    "train_energy_high_j", "train_energy_wh", "train_emissions_g", "train_duration_s", "search_energy_j",
    "search_emissions_g", "obtain_energy_j", "energy_per_1k_j", "energy_per_1k_j_se", "latency_ms_per_sample",
    "params", "size_bytes",
    "flops_per_sample_inference", "train_flops_total", "flops_per_joule", "energy_to_target_j",
    "front_train", "knee_train", "front_inference", "knee_inference", "front_search", "knee_search",
    "energy_method", "condition_id", "condition_text", "git_commit", "dvc_exp_name", "run_id",
]


def load(params: Params, filters: Filters | None = None) -> Comparison:
    """Read the store and compare the selected models (raises EmptySelection / FilterError /
    StoreError, all DataError: the CLI prints them and exits 2)."""
    filters = (filters or Filters()).validate()
    pushed = filters.store_filter()
    records, names, uri = read_runs(params.tracking, filters.experiments or None, filter_string(**pushed),
                                    filters.all_experiments)
    if not records and any(pushed.values()):  # read the rest, to say what the store holds instead
        records, names, uri = read_runs(params.tracking, filters.experiments or None, filter_string(),
                                        filters.all_experiments)
    return compare(records, filters, names, uri)


def write_csv(cmp: Comparison, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in cmp.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return path


def write_outputs(cmp: Comparison, out: Path, extra_sections: Sequence[Section] = ()) -> dict[str, Path]:
    from pipeline.reporting.figures import pareto_figure, size_figure

    out.mkdir(parents=True, exist_ok=True)
    pareto, hover = pareto_figure(cmp, out / "accuracy_vs_energy.png")
    figures = [
        Figure(pareto,
               "Test accuracy against training energy, inference energy per 1,000 predictions, and search + "
               "training energy: Pareto front joined, dominated models faded, knee starred (hover a point: "
               "its run and params)", hover),
        Figure(size_figure(cmp, out / "size_sweep.png"),
               "Model size: test accuracy and training energy against parameters and inference FLOPs per sample"),
    ]
    written = {
        "csv": write_csv(cmp, out / "plots" / "models.csv"),
        "markdown": out / "report.md",
        "html": out / "report.html",
        **{f.path.stem: f.path for f in figures},
    }
    written["markdown"].write_text(markdown(cmp, figures, extra_sections))
    written["html"].write_text(html_page(cmp, figures, extra_sections))
    return written


def write_report(params: Params, filters: Filters | None = None, out: Path | None = None,
                 extra_sections: Sequence[Section] = ()) -> Path:
    """Compare and write the report; returns the HTML page's path."""
    cmp = load(params, filters)
    return write_outputs(cmp, out or paths.REPORTS_DIR, extra_sections)["html"]
