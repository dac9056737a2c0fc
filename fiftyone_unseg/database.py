"""Connecting to FiftyOne's database from processes that start together."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import tempfile
import time

try:
    import fcntl
except ImportError:  # Windows: no lock, FiftyOne's own start-up
    fcntl = None

START_ATTEMPTS = 4
"""Tries of :func:`connect`, 2, 4 and 8 s apart."""
logger = logging.getLogger(__name__)


class _OldestMongoNotice(logging.Filter):
    """Drops FiftyOne's notice that its own bundled MongoDB is the oldest supported major
    version: it came with every connection and there is nothing for a user to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "oldest supported major version" not in record.getMessage()


# A filter, not ``database_validation=False``: that would also skip FiftyOne's checks,
# and a process that imported fiftyone before this module would still print it.
logging.getLogger("fiftyone.core.odm.database").addFilter(_OldestMongoNotice())


def start_lock_path() -> str:
    """The per-user lock file that :func:`connect` holds (FiftyOne shares one database
    service among all processes of a user; a user id without a name, as in a container
    run with ``--user 1234``, goes by its number)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return os.path.join(tempfile.gettempdir(), f"unseg-fiftyone-start-{user}.lock")


def connect() -> None:
    """Connect to FiftyOne's database, starting it at most once however many processes
    start at the same moment.

    FiftyOne starts its MongoDB service when no process of the user runs one. Processes
    that start together (the shards of one ``unseg protect`` run, the ranks of one
    ``torchrun``, benchmarks side by side) each start one, and all but the first die with
    "mongod ... exited with error 100" (voxel51/fiftyone#2062). Under this lock the first
    starts it and the others find it running.

    A process that comes while the service of a process that just ended shuts down, or
    while MongoDB starts slowly on a busy CPU, gets ``ServiceListenTimeout`` (after 60 s)
    or a connection error: it forgets the failed start and tries again, 2, 4 and 8 s later.
    """
    import fiftyone.core.odm.database as food
    import fiftyone.core.service as fos
    import pymongo.errors

    for attempt in range(START_ATTEMPTS):
        try:
            with _start_lock():
                food.get_db_conn()
            return
        except (fos.ServiceException, ConnectionError, pymongo.errors.ConnectionFailure) as e:
            if attempt == START_ATTEMPTS - 1:
                raise
            delay = 2 ** (attempt + 1)
            logger.warning("FiftyOne's database did not start (%r); retrying in %d s", e, delay)
            _forget_failed_start(food)
            time.sleep(delay)


@contextlib.contextmanager
def _start_lock():
    """Holds :func:`start_lock_path` (nothing where there is no ``fcntl``, or where the
    file cannot be opened: a shared temporary folder where another account owns the name,
    say; FiftyOne's own start-up then, as without this module)."""
    if fcntl is None:
        yield
        return
    path = start_lock_path()
    try:
        lock = open(path, "a")
    except OSError as e:
        logger.warning("cannot open the database start lock %s (%s); starting without it", path, e)
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _forget_failed_start(food) -> None:
    """Lets FiftyOne start afresh: drops its failed service and client, and a port inherited
    from a parent whose database is gone (FiftyOne keeps these in module globals)."""
    service, food._db_service = food._db_service, None
    if service is not None:
        service.stop()
    food._disconnect()
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
