"""A local Google Cloud Storage for tests: gs:// workdirs without a network.

`start()` runs gcp-storage-emulator (a pure-Python GCS JSON API server) on a free
loopback port, in memory, with one bucket, and points every client jaxtrain's gs://
paths go through at it: gcsfs (epath) and google-cloud-storage (tensorboardX) read
STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) TENSORSTORE_GCS_HTTP_URL. The
variables are set in os.environ, so the command lines a test starts reach it too.
The server lives as long as the process that started it (tensorboardX's writers
flush once more when they are garbage-collected).
"""

from __future__ import annotations

import logging
import os
import tempfile

BUCKET = "jaxtrain-test"
_SERVER = []


def start() -> str:
  """Starts the emulator once per process; returns the bucket's URL, gs://BUCKET."""
  if not _SERVER:
    from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    # A client that hangs up early is not an error worth a traceback on stderr.
    server._api._httpd.handle_error = lambda *args: None  # pylint: disable=protected-access
    port = server._api._httpd.server_address[1]  # pylint: disable=protected-access
    url = f"http://127.0.0.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    os.environ["GOOGLE_CLOUD_PROJECT"] = "jaxtrain-test"
    # No cloud credentials here: the emulator takes anonymous requests; an empty
    # credentials folder keeps gcloud's own from being looked up.
    os.environ.setdefault("CLOUDSDK_CONFIG", tempfile.mkdtemp(prefix="gcloud-"))
    logging.getLogger("gcsfs").setLevel(logging.ERROR)
    _SERVER.append(server)
  return f"gs://{BUCKET}"
