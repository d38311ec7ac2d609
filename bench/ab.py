"""Before/after of one change, measured in the same invocation: ``python -m bench.ab A B``.

Checks out two revisions of keepflow into temporary git worktrees and runs this checkout's
consumer-run benchmark
(``bench.runtime.bench_consumer_run``: prepare → HTTP POST to a loopback sink → next → commit on
SQLite WAL, ``synchronous=FULL``) in each, alternating A, B, A, B… so that drift of the machine
hits both alike. Prints one JSON object: the median of the per-round medians of each revision
and ``ratio_after_vs_before`` (B / A; below 1 is faster). Results of the optimisations made so
far are kept in ``bench/optimisations.json`` and shown in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_SNIPPET = """
import json, sys
from bench.runtime import bench_consumer_run
from keepflow.sandbox.pool import SandboxPool
with SandboxPool(size=1) as pool:
    out = bench_consumer_run(pool, int(sys.argv[1]))
print(json.dumps(out))
"""


def _worktree(rev: str, into: Path) -> Path:
    path = into / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev],
                   check=True)
    return path


def _once(tree: Path, n: int) -> dict[str, Any]:
    """keepflow from ``tree``, the benchmark code from this checkout (the same for both)."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", _SNIPPET, str(n)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def compare(before: str, after: str, rounds: int, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        trees = {before: _worktree(before, Path(tmp)), after: _worktree(after, Path(tmp))}
        try:
            medians: dict[str, list[float]] = {before: [], after: []}
            statements: dict[str, Any] = {}
            for _ in range(rounds):
                for rev, tree in trees.items():
                    got = _once(tree, n)
                    medians[rev].append(got["median_ms"])
                    statements[rev] = got.get("statements_per_run")
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], check=False)
    b, a = statistics.median(medians[before]), statistics.median(medians[after])
    return {"before": before, "after": after, "rounds": rounds, "runs_per_round": n,
            "before_median_ms": round(b, 3), "after_median_ms": round(a, 3),
            "before_statements_per_run": statements[before],
            "after_statements_per_run": statements[after],
            "ratio_after_vs_before": round(a / b, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(compare(args.before, args.after, args.rounds, args.runs)))


if __name__ == "__main__":
    main()
