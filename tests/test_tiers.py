"""tests/conftest.py tiers: every test carries exactly one tier marker, its file's tier
(TIERS) unless the test names its own, so `-m "unit or parity"` leaves out each test that
runs another process wherever it lives; the session runs the slow tiers first."""

import pytest

from conftest import RUN_ORDER, TIER_NAMES, tier_of


def _tiers(request):
  return [m.name for m in request.node.iter_markers() if m.name in TIER_NAMES]


def test_a_test_carries_its_files_tier(request):
  assert _tiers(request) == ["unit"]   # this file is in no TIERS entry: the default


@pytest.mark.integration
def test_a_tier_marker_on_the_test_wins_over_its_files(request):
  assert _tiers(request) == ["integration"]


def test_the_session_runs_the_slow_tiers_first(request):
  ranks = [RUN_ORDER.index(tier_of(item)) for item in request.session.items]
  assert ranks == sorted(ranks)
