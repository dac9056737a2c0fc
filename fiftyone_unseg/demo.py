"""``make demo``: the main flow on the sample data, end to end."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

from fiftyone_unseg import cli  # noqa: E402

DATASET = "unseg-demo"


def main() -> int:
    print(f"[1/1] Creating the sample dataset {DATASET!r} (60 scenes, 512 px)")
    rc = cli.run(
        cli.build_parser(),
        ["sample-data", "--name", DATASET, "--num", "60", "--seed", "0", "--overwrite"],
    )
    if rc:
        return rc
    print(
        "Protection and the victim audit are not part of this version yet; the demo stops "
        "after creating the sample dataset."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
