"""How repeatable a training's energy and time are: the same configuration trained several
times per family, alone and beside other work, each a real ``python -m pipeline train``.

    python benchmarks/repeatability.py [--families mlp cnn rnn transformer] [--rounds 3] [--epochs 10]

Each round trains every family twice, alternating which comes first: *alone*, and *beside* one
CPU-bound process (a busy loop on one core, what another job on the machine does). Same seed,
same params (early stopping off, so every run does the same epochs; ``train.threads: auto``).
Prints per family and situation the coefficient of variation (sample sd / mean) of energy and of
training time, the mean energy, and the ratio of the means beside / alone, with the energy method
and the measured work beside each run (``energy/others_cores``). Goal (issue 18): CV of energy
<= 5 % alone. Writes into a temporary directory; nothing in the project changes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _common import ROOT, pipeline_env

sys.path.insert(0, str(ROOT))
from pipeline.uncertainty import Spread  # noqa: E402

BUSY = "while True: pass"


def train(case: Path, family: str, beside: bool) -> dict:
    burner = subprocess.Popen([sys.executable, "-c", BUSY]) if beside else None
    try:
        out = subprocess.run([sys.executable, "-m", "pipeline", "train", "--family", family], cwd=case,
                             env=pipeline_env(), capture_output=True, text=True)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    if out.returncode != 0:
        sys.exit(f"train {family} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads((case / "metrics" / "train" / f"{family}.json").read_text())


def line(values: list[float], unit: str) -> str:
    s = Spread.of(values)
    if s is None:
        return "not measured"
    cv = f"CV {s.cv:.1%}" if s.cv is not None else "CV n/a"
    return f"mean {s.mean:.1f} {unit} [{min(values):.1f}-{max(values):.1f}], {cv}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn", "rnn", "transformer"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    if args.rounds < 2:
        sys.exit("--rounds must be at least 2: a spread needs two runs")
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["train"].update({"max_epochs": args.epochs, "early_stopping_patience": 0, "threads": "auto"})
        (case / "params.yaml").write_text(yaml.safe_dump(raw))
        subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=case, check=True, capture_output=True,
                       env=pipeline_env())
        for r in range(args.rounds):
            for family in args.families:
                order = (False, True) if r % 2 == 0 else (True, False)  # drift hits both situations alike
                for beside in order:
                    m = train(case, family, beside)
                    runs.setdefault((family, "beside" if beside else "alone"), []).append(m)
                    print(f"round {r + 1} {family} {'beside' if beside else 'alone'}: {m['energy_j']:.1f} J, "
                          f"{m['duration_s']:.1f} s", file=sys.stderr, flush=True)
    first = next(iter(runs.values()))[0]
    print(f"{len(args.families)} families x {args.rounds} rounds, {args.epochs} epochs each (early stopping off), "
          f"{len(os.sched_getaffinity(0))} cores; energy: CodeCarbon, {first.get('energy_method', '?')}")
    for family in args.families:
        alone, beside = runs[(family, "alone")], runs[(family, "beside")]
        print(f"\n{family}")
        for name, ms in (("alone", alone), ("beside", beside)):
            others = [m["others_cores"] for m in ms if m.get("others_cores") is not None]
            print(f"  {name:6s} energy {line([m['energy_j'] for m in ms], 'J')}; "
                  f"time {line([m['duration_s'] for m in ms], 's')}; "
                  f"other work {min(others, default=float('nan')):.2f}-{max(others, default=float('nan')):.2f} cores")
        ea, eb = Spread.of([m["energy_j"] for m in alone]), Spread.of([m["energy_j"] for m in beside])
        print(f"  beside / alone: energy {eb.mean / ea.mean:.2f}x, time "
              f"{Spread.of([m['duration_s'] for m in beside]).mean / Spread.of([m['duration_s'] for m in alone]).mean:.2f}x")


if __name__ == "__main__":
    main()
