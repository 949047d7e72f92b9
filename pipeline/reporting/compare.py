"""Which runs to compare, and one row per model built from them.

A **model row** is any finished run that carries ``test/acc``, except the evaluate stage's own
runs (they evaluate another run, whose row already holds their test figures; their latency is
joined onto it). So the train stage's baselines, the search's tuned refits, the sweep's sizes and
the compress stage's variants all appear side by side, whatever stage made them.

Costs of a row (J; Wh = J / 3600; g CO2eq = kg x 1000):

- **training energy**: the run's ``energy/total_j``. A compressed variant (``source_run_id`` set,
  stage ``compress``) adds its own cost to its source's training energy: what it took to have it
  (not a ``scratch`` student, trained from labels alone: its own energy is its training).
- **search energy**: for a tuned refit, the whole search that chose it (its study run's
  ``search/energy_j``: every trial, pruned and failed ones included); none for other models.
- **search + training energy**: the sum, i.e. all the energy spent to find and train the model;
  for a model that no search produced it is its training energy.
- **inference energy**: ``test/energy_per_1k_j``, J per 1,000 predictions.

Groups: a row belongs to its DVC experiment (tag ``dvc_exp_name``), else to the git commit it
ran at. By default a rerun replaces the earlier run of the same model in the same group (latest
``start_time`` wins); ``all_runs`` keeps every run.

Noise (``pipeline.uncertainty``). A row's training energy is the mean of every run of its
configuration (tag ``config_key``: same family, model, training params and data; any seed) in its
group measured under its condition: the repeats of ``train.repeats`` and reruns alike, with their
count and confidence interval. Each row carries the standard errors the noise-aware fronts use:
test accuracy's from its test split's size (binomial); training energy's from its repeats, else
the coefficient of variation pooled over the repeated configurations of its condition, else
none (not measured: compared exactly); inference energy's over the evaluation's rounds.

Conditions (``pipeline.fingerprint``): rows measured on different machines, by different methods,
or alone versus beside other work, are not comparable. Each condition gets its own fronts and
knees unless ``mix``, which puts them on one front with each method's bounds added to the noise.
"""
from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline import fingerprint
from pipeline.data.source import DataError
from pipeline.models.family import families
from pipeline.pareto import knee, noisy_front, pareto_front, ties
from pipeline.reporting.store import RunRecord
from pipeline.uncertainty import Spread, Z, binomial_se, pooled_cv

# Stages that produce models; a tuned refit's origin is "tune" (its MLflow tag says stage=train).
MODEL_STAGES = ("train", "tune", "sweep", "compress")
HOVER_PARAMS = ("train.lr", "train.batch_size", "train.max_epochs", "technique", "level")
WORKSPACE = "workspace"  # --dvc-exp value for runs made outside any DVC experiment

# (key in a row, axis title, short name) of the three Pareto fronts.
AXES = (
    ("train_energy_j", "training energy (J)", "train"),
    ("energy_per_1k_j", "inference energy per 1,000 predictions (J)", "inference"),
    ("obtain_energy_j", "search + training energy (J)", "search"),
)


class FilterError(DataError):
    """A filter value that cannot be used (bad date, unknown family, --top 0, ...)."""


class EmptySelection(DataError):
    """Nothing to compare; the message says what the store holds instead."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: float | None = None) -> int:
    """A point in time as epoch milliseconds, from an ISO date or date-time (local time unless it
    names a zone: ``2026-11-20``, ``2026-11-20T14:30``) or a duration back from now (``90m``,
    ``12h``, ``3d``, ``2w``)."""
    now = time.time() if now is None else now
    m = _DURATION.match(text)
    if m:
        return int((now - float(m.group(1)) * _SECONDS[m.group(2).lower()]) * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(f"{text!r} is neither a date (2026-11-20, 2026-11-20T14:30) nor a duration "
                          "(90m, 12h, 3d, 2w)") from None
    return int(when.timestamp() * 1000)


def resolve_commit(text: str) -> str:
    """A commit hash prefix (4 to 40 hex digits), or a git ref such as HEAD resolved in the
    current repository, as a lowercase prefix."""
    value = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{4,40}", value):
        return value.lower()
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{value}^{{commit}}"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    raise FilterError(f"--commit {text!r}: not a commit hash prefix (4-40 hex digits) nor a git ref of this repository")


@dataclass
class Filters:
    """What to compare. Empty lists select everything."""

    experiments: list[str] = field(default_factory=list)  # MLflow experiments; empty: tracking.experiment_name
    all_experiments: bool = False
    families: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)  # lowercase hash prefixes
    dvc_exps: list[str] = field(default_factory=list)  # DVC experiment names; "workspace" = none
    since_ms: int | None = None
    until_ms: int | None = None
    top: int | None = None
    all_runs: bool = False
    mix: bool = False  # one front over runs measured under different conditions (marked)

    def validate(self) -> Filters:
        bad = [f for f in self.families if f not in families()]
        if bad:
            raise FilterError(f"unknown family {', '.join(map(repr, bad))}; choose from {', '.join(families())}")
        bad = [s for s in self.stages if s not in MODEL_STAGES]
        if bad:
            raise FilterError(f"unknown stage {', '.join(map(repr, bad))}; choose from {', '.join(MODEL_STAGES)}")
        if self.top is not None and self.top < 1:
            raise FilterError(f"--top must be at least 1, got {self.top}")
        if self.since_ms is not None and self.until_ms is not None and self.since_ms > self.until_ms:
            raise FilterError("--since is later than --until: nothing can match")
        return self

    def describe(self) -> str:
        parts = []
        for name, values in (("family", self.families), ("stage", self.stages), ("commit", self.commits),
                             ("DVC experiment", self.dvc_exps)):
            if values:
                parts.append(f"{name} {', '.join(values)}")
        if self.since_ms is not None:
            parts.append(f"since {_iso(self.since_ms)}")
        if self.until_ms is not None:
            parts.append(f"until {_iso(self.until_ms)}")
        if self.top is not None:
            parts.append(f"top {self.top} by test accuracy")
        parts.append("every run" if self.all_runs else "latest run per model and group")
        if self.mix:
            parts.append("conditions mixed on one front")
        return "; ".join(parts)

    def store_filter(self) -> dict[str, dict[str, str]]:
        """The part MLflow can apply itself (the tags that a model's related runs share too)."""
        equal, prefix = {}, {}
        if len(self.families) == 1:
            equal["family"] = self.families[0]
        if len(self.commits) == 1:
            prefix["git_commit"] = self.commits[0]
        return {"tags_equal": equal, "tags_prefix": prefix}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).isoformat(timespec="minutes")


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _add(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else sum(values)


def group_of(tags: dict[str, str]) -> str:
    if tags.get("dvc_exp_name"):
        return tags["dvc_exp_name"]
    commit = tags.get("git_commit") or "unknown"
    return f"commit {commit[:7]}" if commit != "unknown" else "no commit"


def _row(r: RunRecord, by_id: dict[str, RunRecord], evals: dict[str, RunRecord]) -> dict[str, Any]:
    t, m = r.tags, r.metrics
    stage = "tune" if t.get("role") == "refit" else t.get("stage", "unknown")
    family, variant = t.get("family", "unknown"), t.get("variant", "unknown")
    # A variant made from a trained model costs that model's training too; a "scratch" student
    # (the distillation's control, trained from labels alone) owes its source nothing.
    derived = stage == "compress" and not t.get("technique", "").startswith("scratch")
    source = by_id.get(t.get("source_run_id", "")) if derived else None
    own_j, own_kg, own_s = _num(m.get("energy/total_j")), _num(m.get("energy/emissions_kg")), _num(m.get("energy/duration_s"))
    low, high = _num(m.get("energy/total_j_low")), _num(m.get("energy/total_j_high"))
    if source is not None:  # a variant of a trained model: its cost includes its source's training
        sm = source.metrics
        train_j = _add(_num(sm.get("energy/total_j")), own_j)
        train_kg = _add(_num(sm.get("energy/emissions_kg")), own_kg)
        train_s = _add(_num(sm.get("energy/duration_s")), own_s)
        low, high = _add(_num(sm.get("energy/total_j_low")), low), _add(_num(sm.get("energy/total_j_high")), high)
        searched = source
    else:
        train_j, train_kg, train_s, searched = own_j, own_kg, own_s, r
    study = by_id.get(searched.tags.get("mlflow.parentRunId", "")) if searched.tags.get("role") == "refit" else None
    search_j = _num(study.metrics.get("search/energy_j")) if study else None
    search_kg = _num(study.metrics.get("search/emissions_kg")) if study else None
    ev = evals.get(r.run_id)
    em = ev.metrics if ev is not None else {}
    commit = t.get("git_commit", "unknown")
    test_acc, test_n = _num(m.get("test/acc")), _num(m.get("test/samples"))
    return {
        "model": f"{family}-{variant}",
        "family": family,
        "variant": variant,
        "stage": stage,
        "group": group_of(t),
        "experiment": r.experiment,
        "test_acc": test_acc,
        "test_samples": test_n,
        "test_acc_se": binomial_se(test_acc, int(test_n) if test_n else None),
        "test_f1_macro": _num(m.get("test/f1_macro")),
        "val_acc": _num(m.get("val/acc_best", m.get("final/val_acc"))),
        "train_energy_j": train_j,
        "train_energy_wh": None if train_j is None else train_j / 3600,
        "train_emissions_g": None if train_kg is None else train_kg * 1000,
        "train_duration_s": train_s,
        "train_energy_low_j": low,
        "train_energy_high_j": high,
        "train_energy_n": 1 if own_j is not None else 0,
        "search_energy_j": search_j,
        "search_emissions_g": None if search_kg is None else search_kg * 1000,
        "obtain_energy_j": None if train_j is None else train_j + (search_j or 0.0),
        "energy_per_1k_j": _num(m.get("test/energy_per_1k_j")),
        "energy_per_1k_j_se": _num(m.get("test/energy_per_1k_j_se")),
        "latency_ms_per_sample": _num(em.get("test/latency_ms_per_sample", m.get("test/latency_ms_per_sample"))),
        "params": _num(m.get("model/params_total")),
        "size_bytes": _num(m.get("model/size_bytes", m.get("model/param_bytes"))),
        "flops_per_sample_inference": _num(m.get("model/flops_per_sample_inference")),
        "train_flops_total": _num(m.get("final/train_flops_total")),
        "flops_per_joule": _num(m.get("final/flops_per_joule")),
        "energy_to_target_j": _num(m.get("final/energy_to_target_j")),
        "energy_method": t.get("energy_method", "unknown"),
        "condition": fingerprint.condition(t, m),
        "host": {k: v for k, v in t.items() if k.startswith("host_")},
        "libraries": t.get("libraries", ""),
        "torch_threads": t.get("torch_threads", ""),
        "config_key": t.get("config_key", ""),
        # A variant whose source run was not read counts its compression cost alone (the report says so).
        "source_missing": derived and source is None,
        "flops_note": t.get("flops_note", ""),
        "git_commit": commit,
        "dvc_exp_name": t.get("dvc_exp_name", ""),
        "run_id": r.run_id,
        "model_id": t.get("model_id", ""),
        # what the figures' hover titles name: the model's own hyperparameters and the training's main ones
        "hparams": {k: v for k, v in r.params.items() if k.startswith("model.") or k in HOVER_PARAMS},
        "run_name": r.name,
        "start_ms": r.start_ms,
    }


def model_rows(records: Iterable[RunRecord]) -> list[dict[str, Any]]:
    """One row per model run (see the module's docstring), in no particular order."""
    records = list(records)
    by_id = {r.run_id: r for r in records}
    evals: dict[str, RunRecord] = {}
    for r in records:
        if r.tags.get("stage") == "evaluate" and r.tags.get("source_run_id"):
            src = r.tags["source_run_id"]
            if src not in evals or r.start_ms > evals[src].start_ms:
                evals[src] = r
    return [_row(r, by_id, evals) for r in records
            if "test/acc" in r.metrics and r.tags.get("stage") != "evaluate"]


def _keep(row: dict, f: Filters) -> bool:
    if f.families and row["family"] not in f.families:
        return False
    if f.stages and row["stage"] not in f.stages:
        return False
    if f.commits and not any(row["git_commit"].lower().startswith(c) for c in f.commits):
        return False
    if f.dvc_exps and (row["dvc_exp_name"] or WORKSPACE) not in f.dvc_exps:
        return False
    if f.since_ms is not None and row["start_ms"] < f.since_ms:
        return False
    if f.until_ms is not None and row["start_ms"] > f.until_ms:
        return False
    return True


def select(rows: list[dict], f: Filters) -> list[dict]:
    """Filter, keep the latest run per (experiment, group, family, variant, stage) unless
    ``all_runs``, then the ``top`` most accurate (ties: the less training energy)."""
    rows = [r for r in rows if _keep(r, f)]
    if not f.all_runs:
        latest: dict[tuple, dict] = {}
        for r in rows:
            key = (r["experiment"], r["group"], r["family"], r["variant"], r["stage"])
            if key not in latest or r["start_ms"] > latest[key]["start_ms"]:
                latest[key] = r
        rows = list(latest.values())
    rows.sort(key=lambda r: (-(r["test_acc"] if r["test_acc"] is not None else -1),
                             r["train_energy_j"] if r["train_energy_j"] is not None else math.inf, r["run_id"]))
    if f.top is not None:
        rows = rows[:f.top]
    return rows


def label_rows(rows: list[dict]) -> None:
    """A unique, readable ``label`` per row: the model, then its group and experiment where the
    selection holds several, then the run id where still ambiguous."""
    several_groups = len({r["group"] for r in rows}) > 1
    several_exps = len({r["experiment"] for r in rows}) > 1
    for r in rows:
        label = r["model"]
        if several_groups:
            label += f" @ {r['group']}"
        if several_exps:
            label = f"{r['experiment']}: {label}"
        r["label"] = label
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    for r in rows:
        if counts[r["label"]] > 1:
            r["label"] += f" #{r['run_id'][:6]}"


@dataclass
class Condition:
    """Rows measured under one condition (``pipeline.fingerprint``): their own fronts and knees."""

    key: tuple[str, str, str]
    label: str
    rows: list[int]  # indices into Comparison.rows
    knees: dict[str, int | None]
    noise_cv: tuple[float, int] | None  # pooled CV of training energy, configurations it came from


@dataclass
class Comparison:
    """The selected model rows with their Pareto fronts and knees (indices into ``rows``): per
    condition (``conditions``), or over every row with ``filters.mix``. ``knees`` holds, per axis,
    the knee of the first condition (the one with the most rows)."""

    rows: list[dict]
    fronts: dict[str, list[int]]
    knees: dict[str, int | None]
    experiments: list[str]
    store: str
    filters: Filters
    runs_read: int
    conditions: list[Condition] = field(default_factory=list)
    generated_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def groups(self) -> list[str]:
        return sorted({r["group"] for r in self.rows})


def _repeat_samples(records: list[RunRecord]) -> dict[tuple, list[float]]:
    """Training energies of finished runs by (experiment, group, config_key, condition)."""
    out: dict[tuple, list[float]] = {}
    for r in records:
        key = r.tags.get("config_key")
        j = _num(r.metrics.get("energy/total_j"))
        if key and j is not None and r.status == "FINISHED":
            cond = fingerprint.condition(r.tags, r.metrics)
            out.setdefault((r.experiment, group_of(r.tags), key, cond), []).append(j)
    return out


def _apply_repeats(rows: list[dict], samples: dict[tuple, list[float]]) -> dict[tuple, Spread]:
    """A row whose configuration ran several times gets the mean of its runs as training energy
    (``train_energy_n`` runs, ``train_energy_ci95_j``); returns every repeated configuration's spread."""
    spreads = {k: Spread.of(v) for k, v in samples.items() if len(v) > 1}
    for r in rows:
        sp = spreads.get((r["experiment"], r["group"], r["config_key"], r["condition"])) if r["config_key"] else None
        if sp is None or r["train_energy_j"] is None:
            continue
        scale = sp.mean / r["train_energy_j"]  # the method's bounds follow the mean
        r["train_energy_j"], r["train_energy_n"], r["train_energy_ci95_j"] = sp.mean, sp.n, sp.ci95
        r["train_energy_sd_j"] = sp.sd
        r["train_energy_wh"] = sp.mean / 3600
        for k in ("train_energy_low_j", "train_energy_high_j"):
            r[k] = None if r[k] is None else r[k] * scale
        r["obtain_energy_j"] = sp.mean + (r["search_energy_j"] or 0.0)
    return spreads


def _noise(r: dict, key: str, cv: float | None, mix: bool) -> tuple[float | None, float | None]:
    """(quality's, cost's) standard error of a row on one energy axis (the module's rules)."""
    value = r.get(key)
    if value is None:
        return r["test_acc_se"], None
    if key == "energy_per_1k_j":
        se = r.get("energy_per_1k_j_se")
    else:
        n = r.get("train_energy_n") or 1
        sd = r.get("train_energy_sd_j") if n > 1 else None
        if sd is None and cv is not None and r["train_energy_j"]:
            sd = cv * r["train_energy_j"]
        se = None if sd is None else sd / math.sqrt(n)
        if key == "obtain_energy_j" and r.get("search_energy_j") and cv is not None:
            se = math.hypot(se or 0.0, cv * r["search_energy_j"])
    if mix:  # the method's bounds do not cancel between conditions: half their width is ~Z errors
        low, high = r.get("train_energy_low_j"), r.get("train_energy_high_j")
        if key != "energy_per_1k_j" and low is not None and high is not None and r.get("train_energy_j"):
            rel = (high - low) / 2 / r["train_energy_j"]
            se = math.hypot(se or 0.0, rel * value / Z)
    return r["test_acc_se"], se


def _fronts(rows: list[dict], members: list[int], cv: float | None, mix: bool) -> dict[str, tuple[list[int], int | None]]:
    """(front, knee) per axis over the rows ``members``; marks each row's flags."""
    out = {}
    for key, _, axis in AXES:
        pts = [(rows[i]["test_acc"], rows[i][key]) for i in members]
        # A cost of zero or less is a measurement that did not happen, not a free model.
        pts = [(q, c) if c is not None and c > 0 else (q, None) for q, c in pts]
        noise = [_noise(rows[i], key, cv, mix) for i in members]
        front = noisy_front(pts, noise)
        k = knee(pts, pareto_front(pts))
        tied = ties(pts, front, noise)
        on = set(front)
        for j, i in enumerate(members):
            r = rows[i]
            r[f"front_{axis}"] = j in on
            r[f"knee_{axis}"] = j == k
            r[f"ties_{axis}"] = [rows[members[t]]["label"] for t in tied.get(j, [])]
            r[f"noise_{axis}"] = noise[j]
        out[axis] = ([members[j] for j in front], None if k is None else members[k])
    return out


def compare(records: list[RunRecord], f: Filters, experiments: list[str], store: str) -> Comparison:
    """Model rows of ``records`` selected by ``f``, with a front and knee per energy axis and
    per-row flags ``front_<axis>`` / ``knee_<axis>`` / ``ties_<axis>``. Raises EmptySelection
    with what exists."""
    all_rows = model_rows(records)
    where = f"MLflow experiment(s) {', '.join(experiments) or '(none)'} in {store}"
    if not records:
        raise EmptySelection(f"no finished runs in {where}: run the pipeline first (dvc repro)")
    if not all_rows:
        raise EmptySelection(f"no evaluated model (a run with test/acc) among the {len(records)} finished runs "
                             f"in {where}: run the evaluate stage first")
    rows = select(all_rows, f)
    if not rows:
        present = {
            "families": sorted({r["family"] for r in all_rows}),
            "stages": sorted({r["stage"] for r in all_rows}),
            "DVC experiments": sorted({r["dvc_exp_name"] or WORKSPACE for r in all_rows}),
            "commits": sorted({r["git_commit"][:7] for r in all_rows}),
        }
        first, last = min(r["start_ms"] for r in all_rows), max(r["start_ms"] for r in all_rows)
        have = "; ".join(f"{k}: {', '.join(v)}" for k, v in present.items())
        raise EmptySelection(f"no model matches the filters ({f.describe()}); {len(all_rows)} models in {where} "
                             f"({have}; runs from {_iso(first)} to {_iso(last)})")
    label_rows(rows)
    spreads = _apply_repeats(rows, _repeat_samples(records))
    by_cond: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        by_cond.setdefault(r["condition"], []).append(i)
    tags_of = {r.run_id: r.tags for r in records}
    conditions = [Condition(c, fingerprint.describe(c, tags_of.get(rows[by_cond[c][0]]["run_id"])), by_cond[c], {},
                            pooled_cv([sp for k, sp in spreads.items() if k[3] == c]))
                  for c in sorted(by_cond, key=lambda c: (-len(by_cond[c]), c))]
    for n, cond in enumerate(conditions, 1):
        for i in cond.rows:
            rows[i]["condition_id"], rows[i]["condition_text"] = f"C{n}", cond.label
    fronts: dict[str, list[int]] = {axis: [] for _, _, axis in AXES}
    knees: dict[str, int | None] = {}
    if f.mix:  # one front over every row; each condition names the knee if it is one of its rows
        cv = pooled_cv(list(spreads.values()))
        for axis, (front, k) in _fronts(rows, list(range(len(rows))), cv and cv[0], True).items():
            fronts[axis], knees[axis] = front, k
            for cond in conditions:
                cond.knees[axis] = k if k in cond.rows else None
    else:
        for cond in conditions:
            for axis, (front, k) in _fronts(rows, cond.rows, cond.noise_cv and cond.noise_cv[0], False).items():
                fronts[axis] += front
                cond.knees[axis] = k
        knees = dict(conditions[0].knees)
    for axis in fronts:
        fronts[axis].sort(key=lambda i, a=axis: (_cost(rows[i], a), -(rows[i]["test_acc"] or 0), i))
    return Comparison(rows, fronts, knees, experiments, store, f, len(records), conditions)


_AXIS_KEY = {axis: key for key, _, axis in AXES}


def _cost(r: dict, axis: str) -> float:
    v = r.get(_AXIS_KEY[axis])
    return v if v is not None else math.inf
