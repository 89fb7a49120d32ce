"""Runs gcp-storage-emulator (a local GCS JSON-API server) with one gap to real GCS closed, and a
count of the bytes each request sends.

Real GCS sends `x-goog-generation` / `x-goog-metageneration` headers with every media download;
the emulator (2026.7.19) sends neither, and TensorStore (orbax's array writer) reads an object's
generation from that header: without it every read of an existing OCDBT manifest fails with
"Malformed StorageGeneration". The headers are added here, before the server module builds its
route table from the handler functions.

Every request body the server reads is logged as `[BYTES] <method> <path> <n>` before the request
is answered (so a client that got its answer finds the line in the log): tests/test_gcs.py sums
them to measure what a writer uploads.

Usage: python tests/gcs_emulator.py start --host=127.0.0.1 --port=P --in-memory --default-bucket=B
"""

import sys

from gcp_storage_emulator import server
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

_read_raw_data = server._read_raw_data  # pylint: disable=protected-access


def _read_raw_data_counted(request_handler):
  data = _read_raw_data(request_handler)
  sys.stdout.write(f"[BYTES] {request_handler.command} {request_handler.path} "
                   f"{len(data or b'')}\n")
  sys.stdout.flush()
  return data


server._read_raw_data = _read_raw_data_counted  # pylint: disable=protected-access

if __name__ == "__main__":
  from gcp_storage_emulator.__main__ import main  # pylint: disable=g-import-not-at-top
  main()
