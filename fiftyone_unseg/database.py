"""Connecting to FiftyOne's database from processes that start together."""

from __future__ import annotations

import getpass
import os
import tempfile

import fiftyone as fo

try:
    import fcntl
except ImportError:  # Windows: no lock, FiftyOne's own start-up
    fcntl = None


def start_lock_path() -> str:
    """The per-user lock file that :func:`connect` holds (FiftyOne shares one database
    service among all processes of a user)."""
    return os.path.join(tempfile.gettempdir(), f"unseg-fiftyone-start-{getpass.getuser()}.lock")


def connect() -> None:
    """Connect to FiftyOne's database, starting it at most once however many processes
    start at the same moment.

    FiftyOne starts its MongoDB service when no process of the user runs one. Processes
    that start together (the shards of one ``unseg protect`` run, the ranks of one
    ``torchrun``, benchmarks side by side) each start one, and all but the first die with
    "mongod ... exited with error 100" (voxel51/fiftyone#2062). Under this lock the first
    starts it and the others find it running.
    """
    if fcntl is None:
        fo.core.odm.get_db_conn()
        return
    with open(start_lock_path(), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fo.core.odm.get_db_conn()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
