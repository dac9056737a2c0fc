"""The benchmarks' private sandbox (benchmarks/sandbox.py) against a real MongoDB."""

import os
import shutil
import subprocess
import sys

import fiftyone as fo
from conftest import REPO

BENCHMARKS = os.path.join(REPO, "benchmarks")
# Open the sandbox, store one dataset, print the database and folder; with "clean", also
# call cleanup(); with "hang", wait to be killed.
SCRIPT = """
import sys, time
sys.path.insert(0, {benchmarks!r})
import sandbox
import fiftyone as fo
fo.Dataset("probe").add_sample(fo.Sample(filepath="x.png"))
print(fo.config.database_name, sandbox.TMP, flush=True)
if sys.argv[1] == "clean":
    sandbox.cleanup()
else:
    time.sleep(600)
"""


def _sandbox(mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(benchmarks=BENCHMARKS), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_killed_benchmarks_database_and_folder_go_with_the_next_cleanup():
    client = fo.core.odm.get_db_client()
    killed, alive = _sandbox("hang"), _sandbox("hang")
    try:
        killed_db, killed_tmp = killed.stdout.readline().split()
        alive_db, alive_tmp = alive.stdout.readline().split()
        killed.kill()  # no chance to clean up
        killed.wait()
        assert killed_db in client.list_database_names() and os.path.isdir(killed_tmp)

        cleaner = _sandbox("clean")
        own_db, own_tmp = cleaner.stdout.readline().split()
        assert cleaner.wait(timeout=120) == 0
        names = client.list_database_names()
        assert own_db not in names and not os.path.exists(own_tmp)
        assert killed_db not in names and not os.path.exists(killed_tmp)
        assert alive_db in names and os.path.isdir(alive_tmp)  # still running: kept
    finally:
        alive.kill()
        alive.wait()
        client.drop_database(alive_db)
        shutil.rmtree(alive_tmp, ignore_errors=True)
