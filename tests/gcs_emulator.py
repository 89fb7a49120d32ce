"""Runs gcp-storage-emulator (a local GCS JSON-API server) with one gap to real GCS closed.

Real GCS sends `x-goog-generation` / `x-goog-metageneration` headers with every media download;
the emulator (2026.7.19) sends neither, and TensorStore (orbax's array writer) reads an object's
generation from that header: without it every read of an existing OCDBT manifest fails with
"Malformed StorageGeneration". The headers are added here, before the server module builds its
route table from the handler functions.

Usage: python tests/gcs_emulator.py start --host=127.0.0.1 --port=P --in-memory --default-bucket=B
"""

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # pylint: disable=broad-except  (a missing object: the handler answers 404)
    obj = None
  if obj is not None:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
  return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation

if __name__ == "__main__":
  from gcp_storage_emulator.__main__ import main  # pylint: disable=g-import-not-at-top
  main()
