"""tests/conftest.py `XdistGroupIds`: under `--dist loadgroup` a grouped test's id carries its
group, the key xdist's scheduler sends a whole group to one worker by (pytest 9 reads
`item._id`, pytest-xdist 3.8 writes the group into `item._nodeid`)."""

import os

import pytest

pytestmark = pytest.mark.xdist_group("id_check")


def test_a_grouped_test_id_names_its_group(request):
  # A worker's own config says dist 'no'; the controller's command line is in its workerinput.
  argv = " ".join(getattr(request.config, "workerinput", {}).get("mainargv", []))
  if os.environ.get("PYTEST_XDIST_WORKER") is None or "loadgroup" not in argv:
    pytest.skip("only under pytest-xdist's --dist loadgroup (make test, make test-fast)")
  assert request.node.nodeid.endswith("@id_check"), request.node.nodeid
