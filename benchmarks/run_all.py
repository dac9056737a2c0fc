"""``make bench``: every benchmark, one after another, each in its own process.

Each prints its table and writes ``benchmarks/results/<name>.json`` (the real-data one
``benchmarks/results/real/effectiveness.json``). Extra arguments are passed to the
effectiveness benchmarks (e.g. ``--quick``).
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = (
    "protect_throughput.py",
    "demo_time.py",
    "train_throughput.py",
    "texture_share.py",
    "real_effectiveness.py",
    "effectiveness.py",
)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    failed = []
    for script in BENCHMARKS:
        print(f"\n=== {script} ===", flush=True)
        extra = argv if script.endswith("effectiveness.py") else []
        if subprocess.run([sys.executable, os.path.join(HERE, script), *extra]).returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
