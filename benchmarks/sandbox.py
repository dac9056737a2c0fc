"""A private FiftyOne database and data folder for one benchmark process.

Import it before ``fiftyone``: it points FiftyOne at a database named
``unseg-bench-<host>-<pid>-<random>`` and a temporary folder (:data:`TMP`) named
alike; :func:`cleanup` drops and removes both, and those left by benchmark processes
of this host that no longer run (killed before their own cleanup).
"""

import glob
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import uuid

if "fiftyone" in sys.modules:  # its config is read: the database would be the caller's
    raise ImportError(
        "import sandbox before fiftyone (a test or a script that already uses a database "
        "would send its subprocesses to the sandbox's)"
    )

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_PREFIX = f"unseg-bench-{_HOST}-"  # then <pid>-<random>

os.environ["FIFTYONE_DATABASE_NAME"] = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
TMP = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = TMP
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

from fiftyone_unseg import database  # noqa: E402  (FiftyOne must see the settings above)

database.connect()  # benchmarks started side by side would race to start MongoDB


def _orphaned(name: str) -> bool:
    """Whether ``name`` (a database or folder base name) belongs to a benchmark process of
    this host that is gone."""
    if not name.startswith(_PREFIX):
        return False
    pid = name[len(_PREFIX) :].split("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def measure(run, *args):
    """``run(*args)``, then :func:`cleanup` whatever happens."""
    try:
        return run(*args)
    finally:
        cleanup()


def measure_and_publish(run, args, merge, table) -> int:
    """A benchmark's ``main``: ``run(args)`` in the sandbox; with ``args.update``, the
    results merged into what ``args.out`` holds (``merge(old, new)``); the table printed
    and the JSON written. When ``merge`` refuses (SystemExit) or fails, the run's own
    results go to ``<out>.unmerged.json`` first."""
    import json

    from machine import publish

    results = measure(run, args)
    if args.update and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        try:
            results = merge(old, results)
        except (SystemExit, Exception) as refusal:  # hours of trainings must not go with it
            kept = f"{os.path.splitext(args.out)[0]}.unmerged.json"
            publish(results, table(results), kept)
            raise SystemExit(f"{refusal}; this run's results are in {kept}") from None
    publish(results, table(results), args.out)
    return 0


def cleanup() -> None:
    import fiftyone as fo

    client = fo.core.odm.get_db_client()
    client.drop_database(fo.config.database_name)
    shutil.rmtree(TMP, ignore_errors=True)
    for name in client.list_database_names():
        if _orphaned(name):
            client.drop_database(name)
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{_PREFIX}*")):
        if _orphaned(os.path.basename(folder)):
            shutil.rmtree(folder, ignore_errors=True)
