"""Training runs side by side against the same runs one after the other: wall time, each run's
training time and energy, and accuracy, with ``train.threads: auto`` (the pipeline shares the
cores) and with every process taking every core (what two torch processes do by default).

Each round trains the same families three ways, each a real ``python -m pipeline train``:

- serial:         one after the other, each alone (threads auto: all cores);
- parallel auto:  all at once, ``train.threads: auto`` (cores divided among them);
- parallel all:   all at once, each with ``train.threads`` = every core (oversubscribed).

    python benchmarks/parallel_training.py [--families mlp cnn] [--rounds 3] [--epochs 10]

Prints, per way and family, the median and range over rounds of the run's training time
(``duration_s``) and energy (``energy_j``, CodeCarbon, with its method), the val accuracy, and
each way's wall time. Writes into a temporary directory; nothing in the project changes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import ROOT, pipeline_env, summary


def run_all(case: Path, families: list[str], threads, parallel: bool) -> tuple[float, dict[str, dict]]:
    raw = yaml.safe_load((case / "params.yaml").read_text())
    raw["train"]["threads"] = threads
    (case / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in pipeline_env().items() if k != "OMP_NUM_THREADS"}
    cmds = [[sys.executable, "-m", "pipeline", "train", "--family", f] for f in families]
    t0 = time.perf_counter()
    if parallel:
        procs = [subprocess.Popen(c, cwd=case, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for c in cmds]
        errs = [p.communicate()[1] for p in procs]
        codes = [p.returncode for p in procs]
    else:
        outs = [subprocess.run(c, cwd=case, env=env, capture_output=True, text=True) for c in cmds]
        errs, codes = [o.stderr for o in outs], [o.returncode for o in outs]
    wall = time.perf_counter() - t0
    for f, code, err in zip(families, codes, errs, strict=True):
        if code != 0:
            sys.exit(f"train {f} failed ({code}):\n{err}")
    return wall, {f: json.loads((case / "metrics" / "train" / f"{f}.json").read_text()) for f in families}



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    ways = {"serial": ("auto", False), "parallel auto": ("auto", True), "parallel all": (cores, True)}
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["train"].update({"max_epochs": args.epochs, "early_stopping_patience": 0})
        (case / "params.yaml").write_text(yaml.safe_dump(raw))
        subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=case, check=True, capture_output=True,
                       env=pipeline_env())
        walls: dict[str, list[float]] = {w: [] for w in ways}
        runs: dict[str, dict[str, list[dict]]] = {w: {f: [] for f in args.families} for w in ways}
        for r in range(args.rounds):
            for way, (threads, parallel) in ways.items():  # interleaved: drift hits every way alike
                wall, metrics = run_all(case, args.families, threads, parallel)
                walls[way].append(wall)
                for f, m in metrics.items():
                    runs[way][f].append(m)
                print(f"round {r + 1} {way}: {wall:.1f} s", file=sys.stderr, flush=True)
    method = next(iter(runs["serial"].values()))[0].get("energy_method", "?")
    print(f"{len(args.families)} trainings ({', '.join(args.families)}; {args.epochs} epochs, default params) on "
          f"{cores} cores, {args.rounds} rounds; median [range]; energy: CodeCarbon, {method}")
    for way in ways:
        print(f"\n{way}: wall {summary(walls[way], 's')}"
              + (f" ({statistics.median(walls[way]) / statistics.median(walls['serial']):.2f}x serial)"
                 if way != "serial" else ""))
        for f in args.families:
            ms = runs[way][f]
            print(f"  {f:12s} training {summary([m['duration_s'] for m in ms], 's')}, "
                  f"energy {summary([m['energy_j'] for m in ms if 'energy_j' in m], 'J')}, "
                  f"val/acc {summary([m['val_acc'] for m in ms], '', 3)}, threads {ms[0].get('threads')}")


if __name__ == "__main__":
    main()
