"""tests/conftest.py tiers: every test carries exactly one tier marker, its file's tier
(TIERS) unless the test names its own, so `-m "unit or parity"` leaves out each test that
runs another process wherever it lives."""

import pytest

from conftest import TIER_NAMES, tier_of


def test_a_test_carries_its_files_tier(request):
  assert tier_of(request.node) == "unit"   # this file is in no TIERS entry: the default


@pytest.mark.integration
def test_a_tier_marker_on_the_test_wins_over_its_files(request):
  assert tier_of(request.node) == "integration"


def test_every_collected_test_has_exactly_one_tier(request):
  # tier_of unpacks exactly one marker: a test that named two tiers, or none at all, fails here.
  assert {tier_of(item) for item in request.session.items} <= set(TIER_NAMES)
