"""Run every benchmark in perf/ (quick mode) and print one summary.

Each ``perf/bench_*.py`` compares framepipe with its baseline in the same run and prints one
JSON object as its last line with ``--json``; this collects those objects.

    python perf/run_all.py            # all benchmarks, --quick
    python perf/run_all.py handoff    # only bench_handoff.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PERF = Path(__file__).resolve().parent


def run_one(path: Path, timeout_s: float) -> dict[str, object]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(path), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=PERF.parent,
        check=False,
    )
    elapsed = time.monotonic() - started
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{path.name} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path.name} printed nothing")
    result: dict[str, object] = json.loads(lines[-1])
    result["_elapsed_s"] = round(elapsed, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="benchmark names (bench_<name>.py); default all")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per benchmark")
    args = parser.parse_args()
    paths = sorted(PERF.glob("bench_*.py"))
    if args.names:
        wanted = {f"bench_{n.removeprefix('bench_').removesuffix('.py')}.py" for n in args.names}
        unknown = wanted - {p.name for p in paths}
        if unknown:
            raise SystemExit(f"no such benchmark: {', '.join(sorted(unknown))}")
        paths = [p for p in paths if p.name in wanted]
    summary = {}
    for path in paths:
        print(f"\n=== {path.name}", flush=True)
        summary[path.stem] = run_one(path, args.timeout)
    print("\n=== summary")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
