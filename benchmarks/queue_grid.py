"""A grid of experiments through DVC's queue, two at a time against one at a time: wall time, and
each experiment's training time and energy in both.

    python benchmarks/queue_grid.py [--rounds 2] [--target evaluate@mlp-baseline]
                                    [-S train.lr=0.001,0.003 -S models.mlp.width=64,128]

Makes a git + DVC repo of this project's code and params.yaml in a temporary directory, runs
``prepare`` once, then each round queues the grid (``dvc exp run --queue TARGET -S ...``: every
combination, ``--force``d so that no stage is restored from DVC's run cache) and runs it with
``dvc queue start -j 1`` and with ``-j 2`` (which first alternates every round; the next grid
waits until the workers of the last have left, so each starts its own), timing from
the start of the workers to the git ref of the last experiment (polled with git: DVC's own status
command would take CPU from the experiments). Prints the
wall time of each way (median [range] over rounds, and -j 2 over -j 1), and per experiment the
training time, energy (``metrics/train/*.json``: CodeCarbon, with its method) and torch threads in
each way, their ratio, and whether the two ways' mean energies differ beyond their noise
(``pipeline.uncertainty.beyond``: 1.96 combined standard errors of the rounds). ``train.threads:
auto`` is what keeps two experiments from oversubscribing the cores (docs/scale-out.md): an
experiment then trains on fewer threads beside another than alone, which is different work;
``-S train.threads=1`` gives both ways the same threads, so that their energies measure the same
work alone and side by side.
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import GIT, ROOT, done_with, pipeline_env, scratch_project, summary

sys.path.insert(0, str(ROOT))
from pipeline.uncertainty import Spread, beyond  # noqa: E402


def dvc_env() -> dict[str, str]:
    """The pipeline's environment with this interpreter's dvc first on PATH."""
    return pipeline_env(DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{pipeline_env()['PATH']}")


def sh(case: Path, *cmd: str, timeout: float = 1800) -> str:
    out = subprocess.run(list(cmd), cwd=case, env=dvc_env(), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def make_repo() -> Path:
    """A scratch project (``scratch_project``) with its data prepared and committed, so that the
    queued experiments find it in the cache."""
    case, _ = scratch_project("queue-grid-", [])
    sh(case, "dvc", "repro", "prepare")
    sh(case, *GIT, "add", "-A")
    sh(case, *GIT, "commit", "-qm", "prepared")
    return case


def finished(case: Path) -> int:
    """How many experiments the repo holds (DVC writes an experiment's git ref when it succeeds)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=case,
                          capture_output=True, text=True, check=True).stdout.split()
    return sum(1 for r in refs if r.count("/") >= 4)  # refs/exps/<2>/<38>/<name>, not exec/ or celery/


def workers(case: Path) -> list:
    """DVC's queue workers of this repo (``dvc exp queue-worker`` processes working in it)."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline", "cwd"])
            if "queue-worker" in (p.info["cmdline"] or []) and p.info["cwd"] == str(case)]


def leave(case: Path, wait_s: float = 60) -> None:
    """Wait until the repo's queue workers have exited; end those left after ``wait_s``.

    DVC's workers wait 10 s for more work before they exit; one still there would run the next
    grid's experiments too (a "-j 1" grid right after a "-j 2" one ran two at a time), and ``dvc
    queue start -j 1`` then starts no worker of its own. Not ``dvc queue stop``: its shutdown
    request stays in the queue and stops the next grid's worker too. And not ``dvc queue status``:
    a worker whose idle monitor has shut it down may go on running (seen with DVC 3.67: "shutting
    down due to empty queue", then it took the next grid's tasks and never exited), and the status
    counts it neither active nor idle: its process is what tells.
    """
    import psutil

    deadline = time.monotonic() + wait_s
    while (left := workers(case)) and time.monotonic() < deadline:
        time.sleep(1)
    if left:
        print(f"{len(left)} DVC queue worker(s) still there {wait_s:.0f} s after the grid: ended", file=sys.stderr)
        for p in left:
            p.terminate()
        _, alive = psutil.wait_procs(left, timeout=10)
        for p in alive:  # seen: a worker past its own shutdown ignores SIGTERM
            p.kill()
        psutil.wait_procs(alive, timeout=10)


def run_grid(case: Path, target: str, sets: list[str], jobs: int) -> tuple[float, dict[str, dict]]:
    """Queue the grid, run it ``jobs`` at a time; (wall seconds, train metrics by grid point)."""
    sh(case, "dvc", "exp", "remove", "--all-commits", "--queue")
    # --force: every stage of the target runs, never restored from DVC's run cache (the same grid
    # ran in the other way before), prepare included: the same work in both ways.
    sh(case, "dvc", "exp", "run", "--queue", "--force", target, *[a for s in sets for a in ("-S", s)])
    queued = sh(case, "dvc", "queue", "status").count("Queued")
    before = finished(case)
    if workers(case):
        sys.exit("a DVC queue worker of the scratch repo is running before the grid starts")
    log = case / ".dvc" / "tmp" / "queue-start.log"
    t0 = time.perf_counter()
    with log.open("w") as out:  # the workers outlive the command: no pipe to wait on
        subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=case, stdout=out, stderr=out, check=True,
                       env=dvc_env())
    # Waiting asks git, not DVC: a `dvc queue status` (0.55-0.74 s of CPU here) every second would
    # take a fifth of a core from the experiments it times. DVC asked every 15 s for failures.
    last_asked = time.perf_counter()
    while finished(case) - before < queued:
        time.sleep(0.25)
        if time.perf_counter() - last_asked > 15:
            if "Failed" in (status := sh(case, "dvc", "queue", "status")):
                sys.exit(f"an experiment failed:\n{status}")
            last_asked = time.perf_counter()
    wall = time.perf_counter() - t0
    while "Running" in (status := sh(case, "dvc", "queue", "status")):  # its ref is written last but one
        time.sleep(1)
    if "Failed" in status:
        sys.exit(f"an experiment failed:\n{status}")
    leave(case)
    rows = [r for r in csv.DictReader(io.StringIO(sh(case, "dvc", "exp", "show", "--csv")))
            if r["Experiment"] and r["typ"] != "baseline"]
    keys = [s.split("=")[0] for s in sets]
    points = {}
    for r in rows:
        point = ", ".join(f"{k}={r[next(c for c in r if c.endswith(k))]}" for k in keys)
        # The training's figures (metrics/train/<family>.json; DVC prefixes a column with its
        # file only where two files share the name).
        points[point] = {m: float(r[next(c for c in r if c == m or ("/train/" in c and c.endswith(f":{m}")))])
                         for m in ("duration_s", "energy_j", "threads")}
        points[point]["method"] = r.get("energy_method") or next((r[c] for c in r if c.endswith("energy_method")), "?")
    return wall, points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--target", default="evaluate@mlp-baseline")
    ap.add_argument("-S", dest="sets", action="append", default=None)
    args = ap.parse_args()
    sets = args.sets or ["train.lr=0.001,0.003", "models.mlp.width=64,128"]
    walls: dict[int, list[float]] = {1: [], 2: []}
    runs: dict[int, dict[str, list[dict]]] = {1: {}, 2: {}}
    case = make_repo()
    try:
        for r in range(args.rounds):
            for jobs in ((2, 1) if r % 2 == 0 else (1, 2)):
                wall, points = run_grid(case, args.target, sets, jobs)
                walls[jobs].append(wall)
                for p, m in points.items():
                    runs[jobs].setdefault(p, []).append(m)
                print(f"round {r + 1}, -j {jobs}: {wall:.1f} s, {len(points)} experiments", file=sys.stderr, flush=True)
    finally:
        done_with(case, keep=False)
    n = len(next(iter(runs[1].values()), []))
    method = next(iter(runs[1].values()))[0]["method"]
    print(f"grid of {len(runs[1])} ({' x '.join(sets)}) -> dvc exp run --queue {args.target}; {args.rounds} rounds "
          f"({n} per way); median [range]; energy: CodeCarbon, {method}")
    for jobs in (1, 2):
        ratio = "" if jobs == 1 else f" ({statistics.median(walls[2]) / statistics.median(walls[1]):.2f}x -j 1)"
        print(f"dvc queue start -j {jobs}: wall {summary(walls[jobs], 's')}{ratio}")
    print("\nper experiment: training time and energy, -j 1 | -j 2 | energy ratio (medians); whether the means "
          "differ beyond their noise (1.96 combined standard errors); torch threads")
    for p in sorted(runs[1]):
        one, two = runs[1][p], runs[2].get(p, [])
        e1, e2 = Spread.of([m["energy_j"] for m in one]), Spread.of([m["energy_j"] for m in two])
        ratio = statistics.median(m["energy_j"] for m in two) / statistics.median(m["energy_j"] for m in one) \
            if two else float("nan")
        verdict = "not measured" if e2 is None or e1.n < 2 or e2.n < 2 else \
            ("beyond the noise" if beyond(e1.mean, e2.mean, e1.sem, e2.sem) else "within the noise")
        threads = " | ".join(",".join(sorted({f"{m['threads']:g}" for m in way})) or "-" for way in (one, two))
        print(f"  {p}: {summary([m['duration_s'] for m in one], 's')}, {summary([m['energy_j'] for m in one], 'J')} | "
              f"{summary([m['duration_s'] for m in two], 's')}, {summary([m['energy_j'] for m in two], 'J')} | "
              f"{ratio:.2f}, {verdict}; threads {threads}")


if __name__ == "__main__":
    main()
