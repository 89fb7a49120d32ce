"""bench/method_effects.py: its table arithmetic and the pipeline configs its runs load.

The runs themselves take minutes each (a benchmark, not a test). Here the summary is checked
against a direct re-derivation on made-up results, and the command line of each setting is
checked to give the intended pipeline config.
"""

import importlib.util
import math
import os
import statistics
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = [(b, m, s) for b in ("scratch", "pretrained") for m in ("cam", "seam", "seam_ppc")
        for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def bench():
  path = os.path.join(REPO, "bench", "method_effects.py")
  spec = importlib.util.spec_from_file_location("method_effects", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _made_up_runs(seed=0):
  values = np.random.default_rng(seed).uniform(0.1, 0.6, size=(len(KEYS), 5))
  runs = []
  for (backbone, method, run_seed), v in zip(KEYS, values):
    run = dict(backbone=backbone, method=method, seed=run_seed, seed_miou=v[0], mask_miou=v[1],
               segmentation_miou=v[2], seed_at_rw_threshold_miou=v[0] - 0.01 * v[3])
    if method == "seam_ppc":
      run.update(loss_cross_prototype=v[3], loss_cross_label=v[4])
    runs.append(run)
  return runs


def test_summary_matches_a_direct_derivation(bench):
  runs = _made_up_runs()
  summary = bench.summarise(runs)
  get = {(r["backbone"], r["method"], r["seed"]): r for r in runs}
  for backbone in ("scratch", "pretrained"):
    for method in ("cam", "seam", "seam_ppc"):
      row = summary[backbone][method]
      assert row["seeds"] == [0, 1, 2]
      for out in ("seed", "mask", "segmentation"):
        want = statistics.median(get[backbone, method, s][f"{out}_miou"] for s in range(3))
        assert row[out] == pytest.approx(want, abs=0)
      gain = statistics.median(get[backbone, method, s]["mask_miou"]
                               - get[backbone, method, s]["seed_miou"] for s in range(3))
      assert row["refine_gain"] == pytest.approx(gain, abs=1e-15)
      walk = statistics.median(get[backbone, method, s]["mask_miou"]
                               - get[backbone, method, s]["seed_at_rw_threshold_miou"]
                               for s in range(3))
      assert row["walk_gain"] == pytest.approx(walk, abs=1e-15)
    # PPC's gain over SEAM is per seed (paired), then the median; wins count the seeds.
    row = summary[backbone]["seam_ppc"]
    for out in ("seed", "mask", "segmentation"):
      diffs = [get[backbone, "seam_ppc", s][f"{out}_miou"]
               - get[backbone, "seam", s][f"{out}_miou"] for s in range(3)]
      assert row[f"ppc_gain_{out}"] == pytest.approx(statistics.median(diffs), abs=1e-15)
      assert row[f"ppc_wins_{out}"] == f"{sum(d > 0 for d in diffs)}/3"
    assert summary[backbone]["seam"]["ppc_gain_seed"] is None  # SEAM has no base in the table
    assert row["loss_cross_prototype"] == pytest.approx(statistics.median(
        get[backbone, "seam_ppc", s]["loss_cross_prototype"] for s in range(3)), abs=0)


def test_table_prints_recorded_medians_beside(bench):
  summary = bench.summarise(_made_up_runs(0))
  recorded = bench.summarise(_made_up_runs(1))
  table = bench.format_table(summary, {"all_background (train)": 0.15,
                                       "all_background (val)": 0.125}, recorded)
  row = next(line for line in table.splitlines() if line.startswith("| pretrained | SEAM+PPC"))
  cell = row.split("|")[4].strip()
  assert cell == (f"{100 * summary['pretrained']['seam_ppc']['seed']:.1f} "
                  f"({100 * recorded['pretrained']['seam_ppc']['seed']:.1f})")
  assert f"chance {math.log(5):.2f}" in table
  assert "| baseline | all background | | 15.0 | 15.0 | 15.0 | 12.5 |" in table
  assert len({line.count("|") for line in table.splitlines()}) == 1  # one column count


@pytest.mark.parametrize("backbone", ["scratch", "pretrained"])
def test_each_setting_loads_the_intended_pipeline_config(bench, backbone, tmp_path, monkeypatch):
  """The flags run_one passes give the demo pipeline with the 5-class head and, for
  'pretrained', the stage-0 backbone (and no BN calibration) in stage 1 only."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  seen = []

  def fake_run(cmd, log_path):
    del log_path
    seen.append(cmd)
    raise RuntimeError("stop")

  args = type("Args", (), dict(workdir=str(tmp_path), data_dir=str(tmp_path / "data"),
                               pretrain_workdir=str(tmp_path / "pre")))()
  bench._run_logged, saved = fake_run, bench._run_logged
  try:
    with pytest.raises(RuntimeError, match="stop"):
      bench.run_one(args, backbone, "eps_ppc", 3)
  finally:
    bench._run_logged = saved
  cmd = seen[0]
  assert cmd[1:3] == ["-m", "ppc_jax.pipeline"]
  argv = [cmd[0]] + cmd[3:]
  values = flags.FlagValues()
  # config_flags finds the config file (and so its override flags) in sys.argv at definition
  # time, as it does in the pipeline's own process.
  monkeypatch.setattr(sys, "argv", argv)
  monkeypatch.chdir(REPO)  # the config path is relative to the repository, run_one's cwd
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  flags.DEFINE_string("workdir", None, "", flag_values=values)
  values(argv)
  config = values.config
  assert values.workdir == os.path.join(str(tmp_path), backbone, "eps_ppc", "seed3")
  assert config.seeds.loss.variant == "eps_ppc"
  assert config.seeds.seed == 3 and config.seeds.model.num_classes == 5
  assert config.input.data_dir == str(tmp_path / "data")
  if backbone == "pretrained":
    assert config.seeds.init.backbone_workdir == str(tmp_path / "pre")
    assert config.seeds.init.calibrate_bn_images == 0
  else:
    assert config.seeds.init.backbone_workdir == ""
    assert config.seeds.init.calibrate_bn_images == 32
