"""EPS+PPC and EPS run end to end on the synthetic set: its saliency maps feed the EPS loss, the
trainer takes a few sharded steps, inference runs in EPS mode and the evaluator's report names it.
"""

import json
import os

import numpy as np
import pytest

import e2e_fixtures as e2e

from ppc_jax import evaluate
from ppc_jax.seeds import infer
from ppc_jax.seeds import seed_trainer

pytestmark = pytest.mark.xdist_group("eps_e2e")


def _eps_config(tmp_path_factory, variant):
  config = e2e.tiny_config(e2e.synth_root(tmp_path_factory))
  config.loss.variant = variant
  config.input.with_saliency = True
  config.model.dropout_fea = 0.0
  config.model.pcm = variant == "eps_ppc"
  config.model.proj_dim = config.model.proj_dim if variant == "eps_ppc" else None
  config.loss.max_onehot_bug = variant == "eps_ppc"
  config.loss.ppc.bg_threshold = 0.10
  config.optim.poly_max_step = 3          # frozen LR for the last steps, as the reference's
  config.total_steps = 4
  config.ckpt_every_steps = 4
  config.log_every_steps = 2
  config.log_images_every_steps = 0
  config.infer.mode = "eps"
  config.infer.cam_key = "cam_down"
  config.infer.bg_threshold = 0.22
  return config


@pytest.mark.parametrize("variant", ["eps_ppc", "eps"])
def test_eps_trains_infers_and_evaluates(variant, tmp_path_factory, cache_dir):
  del cache_dir  # fixture: the shared compilation cache
  config = _eps_config(tmp_path_factory, variant)
  workdir = str(tmp_path_factory.mktemp("eps_" + variant))
  metrics = seed_trainer.train_and_evaluate(config, workdir)
  assert np.isfinite(metrics["loss"]) and metrics["loss_sal"] > 0
  if variant == "eps_ppc":
    assert {"loss_rvmin", "loss_er", "loss_ecr", "loss_nce"} <= set(metrics)
  rows = e2e.metric_rows(workdir)
  # poly_max_step = 3 of 4 steps: the LR logged at the end is step 3's, frozen at the step-2
  # value (1/3)^0.9 x lr; without the freeze it would be (1/4)^0.9 x lr.
  np.testing.assert_allclose(rows[-1]["lr"], config.optim.lr * (1 / 3) ** 0.9, rtol=1e-5)

  summary = infer.run_inference(config, workdir, split="train")
  assert summary["mode"] == "eps" and summary["cam_key"] == "cam_down"
  result = evaluate.evaluate_cam_dir(config.input.data_dir, "train",
                                     os.path.join(summary["out_dir"], "cams"))
  assert result["inference"]["mode"] == "eps"
  assert result["inference"]["checkpoint_step"] == 4
  # EPS normalisation: each present class peaks at max / (max + 1e-5) ~ 1, absent ones are 0.
  from ppc_jax.data import cam_io  # pylint: disable=g-import-not-at-top
  cams = cam_io.load_cam_dict(os.path.join(summary["out_dir"], "cams",
                                           sorted(os.listdir(os.path.join(summary["out_dir"],
                                                                          "cams")))[0]))
  for cam in cams.values():
    assert cam.min() >= 0 and 0.999 < cam.max() <= 1.0
  with open(os.path.join(summary["out_dir"], "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["mode"] == "eps"


def test_eps_variant_without_saliency_fails_naming_the_field(tmp_path_factory):
  config = _eps_config(tmp_path_factory, "eps")
  config.input.with_saliency = False
  with pytest.raises(ValueError, match="config.input.with_saliency=True"):
    seed_trainer.train_and_evaluate(config, str(tmp_path_factory.mktemp("eps_nosal")))
