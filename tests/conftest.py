"""Test set-up: a private FiftyOne database and data folder for the whole session.

The variables are set before anything imports fiftyone, so no test can touch a
user's datasets. The database is dropped when the session ends.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TMP = tempfile.mkdtemp(prefix="unseg-tests-")
os.environ["FIFTYONE_DATABASE_NAME"] = f"unseg-tests-{uuid.uuid4().hex[:8]}"
os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = os.path.join(_TMP, "datasets")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ["UNSEG_CACHE_DIR"] = os.path.join(_TMP, "cache")
# The plugin is discovered the way users install it: a plugins dir linking to the repo.
os.makedirs(os.path.join(_TMP, "plugins"))
os.symlink(REPO, os.path.join(_TMP, "plugins", "unseg"))
os.environ["FIFTYONE_PLUGINS_DIR"] = os.path.join(_TMP, "plugins")

import fiftyone as fo  # noqa: E402

from fiftyone_unseg import database, sample_data  # noqa: E402

assert fo.config.database_name == os.environ["FIFTYONE_DATABASE_NAME"], (
    "fiftyone was imported before the test database was configured"
)
# pytest-xdist's workers start together: each would start its own database service, and
# all but one fail (ServiceListenTimeout). Connect as the CLI does, once, under its lock.
database.connect()


# What subprocesses (the CLI, benchmarks) inherit to find the session's database.
DATABASE_ENV = (
    "FIFTYONE_DATABASE_NAME",
    "FIFTYONE_DATABASE_URI",
    "FIFTYONE_PRIVATE_DATABASE_PORT",
    "FIFTYONE_DEFAULT_DATASET_DIR",
)


@pytest.fixture(autouse=True)
def database_env_is_kept():
    """Fails a test that changes :data:`DATABASE_ENV` (and puts it back): every later
    ``unseg`` subprocess of its worker would look in another database."""
    before = {key: os.environ.get(key) for key in DATABASE_ENV}
    yield
    changed = {k: os.environ.get(k) for k, v in before.items() if os.environ.get(k) != v}
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert not changed, f"the test changed the database environment: {changed}"


def pytest_sessionfinish(session, exitstatus):
    try:
        fo.core.odm.get_db_client().drop_database(fo.config.database_name)
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)


def _run_unseg(*args, env=None, check=True, timeout=600):
    exe = os.path.join(os.path.dirname(sys.executable), "unseg")
    proc = subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"unseg {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def unseg():
    """Runs the installed ``unseg`` console script in a subprocess with the test env.

    Call as ``unseg("verb", "--flag", value, env=None, check=True)``; returns the
    ``CompletedProcess``.
    """
    return _run_unseg


@pytest.fixture(scope="session")
def sample_dataset():
    """A small sample dataset shared by read-only tests (clone it before changing it)."""
    return sample_data.create_sample_dataset(
        "unseg-test-samples", num=16, seed=7, size=128, styles=sample_data.STYLES, overwrite=True
    )
