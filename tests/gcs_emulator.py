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

import functools
import http
import logging
import os
import tempfile

BUCKET = "jaxtrain-test"
_SERVER = []


def _api_thread(host: str, port: int, storage):
  """The emulator's server thread, with a listen backlog of 1024 instead of 5: it
  answers one request at a time (its storage is not thread-safe) while TensorStore
  opens many connections at once; they wait instead of being refused."""
  import http.server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top

  class Backlogged(http.server.HTTPServer):
    request_queue_size = 1024

  class Api(emulator.APIThread):

    def run(self):
      self._httpd = Backlogged((self._host, self._port),
                               functools.partial(emulator.RequestHandler, self._storage))
      self.is_running.set()
      self._httpd.serve_forever()

  return Api(host, port, storage, daemon=True)


def _keep_gcs_promises() -> None:
  """Two things GCS does that the emulator leaves out and TensorStore relies on (its
  OCDBT manifest is updated by compare-and-swap): an upload with ifGenerationMatch
  is refused (412) unless the object's generation is that one (0: no object), and a
  download says its object's generation (x-goog-generation). Without them a
  checkpoint save failed now and then ("Malformed StorageGeneration")."""
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  objects = emulator.objects
  insert, download = objects.insert, objects.download

  def generation(storage, bucket, name) -> str:
    try:
      return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
      return "0"

  def checked_insert(request, response, storage, *args, **kwargs):
    want, name = request.query.get("ifGenerationMatch"), request.query.get("name")
    if want and name and generation(storage, request.params["bucket_name"],
                                    name[0]) != want[0]:
      response.status = http.HTTPStatus.PRECONDITION_FAILED
      response.json({"error": {"code": 412, "message": "conditionNotMet"}})
      return None
    return insert(request, response, storage, *args, **kwargs)

  def download_with_generation(request, response, storage, *args, **kwargs):
    found = generation(storage, request.params["bucket_name"], request.params["object_id"])
    if found != "0":
      response["x-goog-generation"] = found
    return download(request, response, storage, *args, **kwargs)

  objects.download = download_with_generation  # objects.get(alt=media) calls it by name.
  for _, handlers in emulator.HANDLERS:
    for method, handler in handlers.items():
      if handler is insert:
        handlers[method] = checked_insert
      elif handler is download:
        handlers[method] = download_with_generation


def start() -> str:
  """Starts the emulator once per process; returns the bucket's URL, gs://BUCKET."""
  if not _SERVER:
    from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    _keep_gcs_promises()
    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server._api = _api_thread("127.0.0.1", 0, server._storage)  # pylint: disable=protected-access
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
    # TensorStore's test token (the emulator ignores it): without it TensorStore looks
    # for credentials and prints "Could not find the credentials file" on stderr.
    os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "emulator"
    logging.getLogger("gcsfs").setLevel(logging.ERROR)
    _SERVER.append(server)
  return f"gs://{BUCKET}"
