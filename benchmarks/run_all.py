"""``make bench``: every benchmark, one after another, each in its own process.

Each prints its table and writes ``benchmarks/results/<name>.json`` (the real-data one
``benchmarks/results/real/effectiveness.json``). The effectiveness benchmarks update
their files (``--update``: rows measured on request, such as the informed attacks, stay).
Extra arguments are passed to them; with ``--quick`` (a smoke run) they write to the
temporary folder instead, leaving the committed results as they are.
"""

import os
import subprocess
import sys
import tempfile

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
    if {"-h", "--help"} & set(argv):  # the suite runs for hours: never on a request for help
        print(__doc__.strip() + "\n\nusage: python benchmarks/run_all.py [--quick] [ARGS...]")
        return 0
    failed = []
    for script in BENCHMARKS:
        print(f"\n=== {script} ===", flush=True)
        extra = []
        if script.endswith("effectiveness.py"):
            smoke = os.path.join(tempfile.gettempdir(), f"unseg-quick-{script[:-3]}.json")
            extra = [*argv, *(["--out", smoke] if "--quick" in argv else ["--update"])]
        if subprocess.run([sys.executable, os.path.join(HERE, script), *extra]).returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
