"""How long ``make demo``'s flow takes on this machine: runs ``examples/demo.py`` (sample
data, protect, the audit) as a newcomer would, after the install, and records the time
of each step it prints. Prints a table and writes ``benchmarks/results/demo_time.json``.
The install (``make install`` from a fresh clone) is not included: time it with
``time make install`` in a fresh clone.
"""

import json
import os
import re
import subprocess
import sys
import time

from machine import machine_facts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
STEP = re.compile(r"^\[(\S+): (\d+) min (\d+) s\]$")


def main() -> int:
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "demo.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    total = time.perf_counter() - start
    if run.returncode:
        print(run.stdout[-2000:] + run.stderr[-2000:], file=sys.stderr)
        return run.returncode
    steps = {
        m.group(1): int(m.group(2)) * 60 + int(m.group(3))
        for m in map(STEP.match, run.stdout.splitlines())
        if m
    }
    audit = [line for line in run.stdout.splitlines() if line.startswith("| semantic")]
    results = {
        "steps_seconds": steps,
        "total_seconds": round(total, 1),
        "audit_row": audit[0] if audit else None,
        "machine": machine_facts(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for name, seconds in steps.items():
        print(f"{name:<12} {seconds:6d} s")
    print(f"{'total':<12} {total:6.0f} s ({total / 60:.1f} min, without the install)")
    if audit:
        print(audit[0])
    with open(os.path.join(RESULTS, "demo_time.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
