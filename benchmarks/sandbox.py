"""A private FiftyOne database and data folder for one benchmark process.

Import it before ``fiftyone``: it points FiftyOne at a database named
``unseg-bench-<random>`` and a temporary folder (:data:`TMP`); :func:`cleanup`
drops and removes both.
"""

import os
import shutil
import tempfile
import uuid

os.environ["FIFTYONE_DATABASE_NAME"] = f"unseg-bench-{uuid.uuid4().hex[:8]}"
TMP = tempfile.mkdtemp(prefix="unseg-bench-")
os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = TMP
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")


def cleanup() -> None:
    import fiftyone as fo

    fo.core.odm.get_db_client().drop_database(fo.config.database_name)
    shutil.rmtree(TMP, ignore_errors=True)
