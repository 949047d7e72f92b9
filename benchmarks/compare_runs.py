"""Time ``python -m pipeline compare`` over a store of 1,000 runs (target: at most 10 s), or several.

Builds a temporary MLflow store (SQLite, on /dev/shm when it exists so that building it is not
bound by disk syncs) holding runs shaped like the pipeline's: per DVC experiment and family, a
baseline training run with its evaluation, a search study with two nested trials, and the tuned
refit with its evaluation (7 runs), each with the pipeline's metric names, per-epoch histories,
params and tags. Then runs the real command end to end (a fresh interpreter: imports, query,
figures, HTML, Markdown, CSV) ``--repeat`` times and prints each wall time and the median [range].
With several ``--runs`` sizes, the sizes are timed alternately and the ratio of the largest's median
to the smallest's is printed beside the ratio of their sizes (linear cost or better: not above it).

    python benchmarks/compare_runs.py                 # 1,000 runs, 3 timed repeats
    python benchmarks/compare_runs.py --runs 1000 10000   # how the time grows with the store
    python benchmarks/compare_runs.py --runs 200 --keep /tmp/store   # keep the store to reuse it
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, summary  # noqa: E402

FAMILIES = ("mlp", "cnn", "rnn", "transformer")
TARGET_S = 10.0
METHOD = "cpu=estimate:cpu_load*tdp;ram=estimate;gpu=none"


def _energy(rng: random.Random, joules: float) -> dict[str, float]:
    kwh = joules / 3.6e6
    return {"energy/total_j": joules, "energy/total_kwh": kwh, "energy/cpu_kwh": kwh * 0.45,
            "energy/ram_kwh": kwh * 0.55, "energy/gpu_kwh": 0.0, "energy/emissions_kg": kwh * 0.37,
            "energy/duration_s": joules / 18, "energy/mean_power_w": 18 + rng.random()}


def build_store(uri: str, n_runs: int, seed: int = 0) -> int:
    """Fill ``uri`` with ``n_runs`` pipeline-shaped runs; returns how many were made."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    rng = random.Random(seed)
    client = MlflowClient(tracking_uri=uri)
    art = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    exp = client.create_experiment("energy-pipeline", artifact_location=art.as_uri())
    made = 0
    t0 = int(time.time() * 1000) - n_runs * 60_000

    def run(name: str, tags: dict, metrics: dict, params: dict | None = None, history: int = 0) -> str:
        nonlocal made
        start = t0 + made * 60_000
        r = client.create_run(exp, run_name=name, start_time=start, tags={k: str(v) for k, v in tags.items()})
        items = [Metric(k, float(v), start, 0) for k, v in metrics.items()]
        for epoch in range(history):  # per-epoch curves, as the training callback logs them
            for k in ("train/loss", "train/acc", "val/loss", "val/acc", "energy/epoch_j", "energy/epoch_mean_power_w"):
                items.append(Metric(k, rng.random(), start + epoch, epoch))
        ps = [Param(k, str(v)) for k, v in (params or {}).items()]
        for i in range(0, max(len(items), len(ps), 1), 1000):
            client.log_batch(r.info.run_id, metrics=items[i:i + 1000], params=ps[i:i + 100])
        client.set_terminated(r.info.run_id, "FINISHED", end_time=start + 30_000)
        made += 1
        return r.info.run_id

    exp_i = 0
    while made < n_runs:
        exp_i += 1
        commit = f"{rng.getrandbits(160):040x}"
        base = {"git_commit": commit, "data_hash": "d" * 64, "dvc_exp_name": f"exp-{exp_i:03d}", "energy_method": METHOD}
        for family in FAMILIES:
            scale = {"mlp": 1, "cnn": 2, "rnn": 5, "transformer": 6}[family] * (0.5 + rng.random())
            params = {"family": family, "train.lr": 10 ** rng.uniform(-3.5, -2), "train.batch_size": 64,
                      **{f"model.p{i}": i for i in range(12)}, "seed": 42}
            for variant in ("baseline", "tuned"):
                if made >= n_runs:
                    break
                acc = min(0.99, 0.55 + 0.1 * scale * rng.random() + 0.03 * (variant == "tuned"))
                n_params = int(10_000 * scale * (1 + rng.random()))
                train_tags = {**base, "stage": "train", "family": family, "variant": variant,
                              "flops_note": "counted by torch.utils.flop_counter"}
                if variant == "tuned":
                    study = run(f"tune-{family}", {**base, "stage": "tune", "family": family, "role": "study"},
                                {"search/energy_j": 200 * scale, "search/energy_kwh": 200 * scale / 3.6e6,
                                 "search/emissions_kg": 2e-5 * scale, "search/trials_complete": 2,
                                 "best/val_acc": acc, "best/trial": 1}, params)
                    for t in range(2):
                        if made < n_runs:
                            run(f"trial-{family}-{t}", {**base, "stage": "tune", "family": family, "role": "trial",
                                                        "trial_state": "COMPLETE", "mlflow.parentRunId": study},
                                {"val/acc_best": acc - 0.02, **_energy(rng, 40 * scale)}, params, history=4)
                    train_tags.update(role="refit", **{"mlflow.parentRunId": study})
                if made >= n_runs:
                    break
                train_j = 100 * scale * (0.8 + 0.4 * rng.random())
                train_id = run(f"train-{family}" if variant == "baseline" else f"refit-{family}", train_tags, {
                    **_energy(rng, train_j), "model/params_total": n_params, "model/param_bytes": 4 * n_params,
                    "model/flops_per_sample_inference": 30 * n_params, "model/flops_per_train_step": 6000 * n_params,
                    "final/val_acc": acc + 0.01, "final/flops_per_joule": 4e8, "final/train_flops_total": 4e8 * train_j,
                    "final/energy_to_target_j": train_j / 5, "val/acc_best": acc + 0.01,
                    "test/acc": acc, "test/f1_macro": acc - 0.005, "test/energy_per_1k_j": 0.02 * scale},
                    params, history=20)
                if made < n_runs:
                    run(f"evaluate-{family}-{variant}", {**base, "stage": "evaluate", "family": family, "variant": variant,
                                                         "source_run_id": train_id},
                        {"test/acc": acc, "test/f1_macro": acc - 0.005, "test/energy_per_1k_j": 0.02 * scale,
                         "test/latency_ms_per_sample": 0.3 * scale, "test/throughput_per_s": 7e4 / scale,
                         **_energy(rng, 40)}, {"family": family})
    return made


def time_compare(uri: str, out: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the command, the finished process). The CPU time (user + system) is what
    the wall time would be on an otherwise idle machine: it does not grow when other processes
    share the cores."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("DVC_ROOT", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--params", str(ROOT / "params.yaml"), "compare",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[1000],
                    help="runs in the store; several sizes are timed alternately (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of the command per size (default 3)")
    ap.add_argument("--keep", type=Path, help="build the stores in this folder and keep them (reused if they exist)")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    work = args.keep or Path(tempfile.mkdtemp(prefix="compare-bench-", dir=base))
    sizes = sorted(set(args.runs))
    try:
        uris = {}
        for n in sizes:
            folder = work / f"runs-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            db = folder / "mlflow.db"
            uris[n] = f"sqlite:///{db}"
            if not db.exists():
                t0 = time.perf_counter()
                made = build_store(uris[n], n)
                print(f"built {made} runs in {time.perf_counter() - t0:.1f} s ({db})", flush=True)
        times: dict[int, list[float]] = {n: [] for n in sizes}
        cpus: dict[int, list[float]] = {n: [] for n in sizes}
        for i in range(args.repeat):
            for n in sizes:  # alternated: a drift of the machine's speed reaches every size alike
                seconds, cpu, proc = time_compare(uris[n], work / f"runs-{n}" / "reports")
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
                    return 1
                times[n].append(seconds)
                cpus[n].append(cpu)
                print(f"{n} runs, compare {i + 1}: {seconds:.2f} s wall, {cpu:.2f} s CPU  "
                      f"({proc.stdout.strip().splitlines()[0]})", flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nload average {load:.1f} on {os.cpu_count()} cores")
        for n in sizes:
            median = statistics.median(times[n])
            verdict = "meets" if median <= TARGET_S else "MISSES"
            print(f"compare over {n} runs: {summary(times[n], 's wall', 2)}, {summary(cpus[n], 's CPU', 2)}; "
                  f"{verdict} the {TARGET_S:.0f} s target")
        small, large = sizes[0], sizes[-1]
        if large > small:
            ratio = statistics.median(times[large]) / statistics.median(times[small])
            print(f"{large} runs / {small} runs: {ratio:.2f}x the time for {large / small:.0f}x the runs "
                  f"(linear or better: <= {large / small:.0f}x)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
