"""``make bench``: every benchmark, one after another, each in its own process.

Each prints its table and writes ``benchmarks/results/<name>.json``; the real-data one
runs once per preset, into ``benchmarks/results/real/effectiveness.json`` (the default)
and ``<preset>.json``, the ``semantic`` preset on the victims it is for and YOLO. The
effectiveness benchmarks update their files (``--update``: rows measured on request,
such as the informed attacks, stay).
Extra arguments are passed to them; with ``--quick`` (a smoke run) they write to the
temporary folder instead, leaving the committed results as they are.
"""

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = (
    ("protect_throughput.py",),
    ("demo_time.py",),
    ("train_throughput.py",),
    ("texture_share.py",),
    ("real_effectiveness.py",),
    ("real_effectiveness.py", "--preset", "robust"),
    # the semantic preset's rows pool five victim seeds (their spread is wide)
    (
        "real_effectiveness.py",
        "--preset",
        "semantic",
        "--victims",
        "semantic",
        "yolo",
        "--seeds",
        "5",
    ),
    ("effectiveness.py",),
)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):  # the suite runs for hours: never on a request for help
        print(__doc__.strip() + "\n\nusage: python benchmarks/run_all.py [--quick] [ARGS...]")
        return 0
    failed = []
    for script, *options in BENCHMARKS:
        name = " ".join((script, *options))
        print(f"\n=== {name} ===", flush=True)
        extra = []
        if script.endswith("effectiveness.py"):
            stem = "-".join((script[:-3], *options[1:2]))
            smoke = os.path.join(tempfile.gettempdir(), f"unseg-quick-{stem}.json")
            extra = [*argv, *(["--out", smoke] if "--quick" in argv else ["--update"])]
        if subprocess.run(
            [sys.executable, os.path.join(HERE, script), *options, *extra]
        ).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
