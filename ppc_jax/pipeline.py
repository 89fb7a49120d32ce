r"""One command for the whole method: seeds -> refinement -> segmentation -> report.

  python -m ppc_jax.pipeline --config=configs/pipeline_ppc_voc12.py --workdir=runs/ppc_pipeline \
      --config.input.data_dir=VOC [--config.init_mxnet_params=ilsvrc-cls_rna-a1_cls1000_ep-0001.params]

Stages, in order (each writes `<workdir>/pipeline/<stage>.json` when it is complete and is skipped
on a later run when that file exists; every stage is resumable inside too: trainers from their
last checkpoint, inference and CRF per image), so a run interrupted anywhere continues where it
stopped when the same command is run again. SIGTERM / SIGINT stop the running stage at its next
safe point (after a training step, with a checkpoint; between images); the command then exits
with status 75 and "... interrupted at step s of T; rerun to resume", and the stage is not marked
complete. A stage's time in the report sums its attempts.

  data          checks the data set (cls_labels.npy, the class list in use); demo configs
                (`config.synth`) generate the synthetic set first, but only into a directory
                that is absent, empty or one the generator made (`synth.generate_owned`): a
                data set of yours is only ever read. With `config.input.source='tfds'` every
                stage reads its images from the prepared TFDS set (`tfds_data_dir`), which this
                stage opens; data_dir's tree still gives the GT masks (evaluation) and the CRF
                stage's images
  seeds         stage 1 training (`config.seeds`, `seed_trainer.train_and_evaluate`)  -> seeds/
  cams          multi-scale CAMs of `refine_split` (train_aug)                    -> seeds/infer_<split>
  seed_eval     seed mIoU on `eval_split` (train; best background threshold of the sweep)
  crf           la / ha CRF score files of the CAMs ('affinity' refinement only)  -> crf/
  affinity      AffinityNet training (`config.affinity`)                           -> affinity/
  masks         pseudo-masks of refine_split: the random walk ('affinity'), or the seed PNGs at
                `config.seeds.infer.bg_threshold` ('seeds': EPS-based methods refine nothing);
                mask mIoU on eval_split
  segment       DeepLab training on the pseudo-masks (`config.segment`)           -> segment/
  segment_eval  multi-scale + flip (+ CRF) segmentation of `config.segment.infer.split`
                (val), PNGs in the VOC server layout, mIoU
  report        <workdir>/report.md and report.json: seed / mask / segmentation mIoU beside the
                paper's numbers for the config, per-stage time, CAM and segmentation overlays

The stage configs are full experiment configs (`config.seeds`, `config.affinity`,
`config.segment`: every `--config.seeds.optim.lr=...` override works); the pipeline sets the
fields that tie them together (data directory, class list, the CRF / CAM / mask directories,
backbone initialisation). `config.init_mxnet_params` gives the ImageNet ResNet38 to every stage
whose own `init` names no file; `config.init_from_stage1=True` starts AffinityNet's and DeepLab's
ResNet38 from the trained stage-1 backbone instead (the demo, which has no ImageNet weights).
Multi-host: every process runs every stage (the trainers and inference split the work); the
host-only parts (CRF, evaluation, report) run on process 0 while the others wait.
"""

import copy
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import interrupt

STAGES = ("data", "seeds", "cams", "seed_eval", "crf", "affinity", "masks", "segment",
          "segment_eval", "report")
REFINE_MODES = ("affinity", "seeds")


def _sync(name):
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _is_main():
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def default_data_dir(workdir):
  """Where the data stage of a demo config generates the synthetic set."""
  return os.path.join(workdir, "data", "VOCdevkit", "VOC2012")


class Paths:
  """Where every stage writes, under the pipeline's work directory."""

  def __init__(self, workdir, config):
    self.workdir = workdir
    self.state = os.path.join(workdir, "pipeline")
    self.seeds = os.path.join(workdir, "seeds")
    self.cams_out = os.path.join(self.seeds, f"infer_{config.refine_split}")
    self.cams = os.path.join(self.cams_out, "cams")
    self.crf = os.path.join(workdir, "crf")
    self.affinity = os.path.join(workdir, "affinity")
    self.rw_out = os.path.join(self.affinity, f"rw_{config.refine_split}")
    self.segment = os.path.join(workdir, "segment")
    self.seg_out = os.path.join(self.segment, f"seg_{config.segment.infer.split}")
    # The pseudo-masks: the random walk's ('affinity'), or the seed PNGs ('seeds').
    self.masks = os.path.join(self.rw_out if config.refine == "affinity" else self.cams_out,
                              "masks" if config.refine == "affinity" else "seeds")

  def marker(self, stage):
    return os.path.join(self.state, f"{stage}.json")


def stage_configs(config, paths):
  """(seeds, affinity, segment) experiment configs with the pipeline's ties applied (copies)."""
  if config.refine not in REFINE_MODES:
    raise ValueError(f"config.refine={config.refine!r}: expected one of {REFINE_MODES}")
  seeds, aff, seg = (copy.deepcopy(c) for c in (config.seeds, config.affinity, config.segment))
  for c in (seeds, aff, seg):
    c.input.data_dir = config.input.data_dir
    c.input.classes = config.input.classes
    # Where every stage reads its images: the directory tree or the TFDS set.
    c.input.source = config.input.source
    c.input.tfds_data_dir = config.input.tfds_data_dir
    c.input.tfds_cache_dir = config.input.tfds_cache_dir
    c.progress_bar = config.progress_bar
    resnet38 = c.model.name != "deeplab" or c.model.backbone == "resnet38"
    handed_over = config.init_from_stage1 and c is not seeds
    if config.init_mxnet_params and resnet38 and not handed_over and not (
        c.init.mxnet_params or c.init.torch_checkpoint):
      c.init.mxnet_params = config.init_mxnet_params
      c.init.mxnet_md5 = config.init_mxnet_md5
  if seeds.stage != "seeds" or aff.stage != "affinity" or seg.stage != "segment":
    raise ValueError(f"config.seeds / affinity / segment must be stage 'seeds' / 'affinity' / "
                     f"'segment' configs; got {seeds.stage!r} / {aff.stage!r} / {seg.stage!r}")
  aff.refine.la_dir = os.path.join(paths.crf, "crf_la")
  aff.refine.ha_dir = os.path.join(paths.crf, "crf_ha")
  aff.refine.cam_dir = paths.cams
  aff.infer.split = config.refine_split
  if config.init_from_stage1:
    aff.init.backbone_workdir = paths.seeds
    seg.init.backbone_workdir = paths.seeds
  seg.segment.mask_dir = paths.masks
  seg.input.split = config.refine_split
  return seeds, aff, seg


def _brief(result):
  keep = ("miou", "miou_gt_classes", "best_threshold", "num_images", "per_class_iou",
          "gt_classes")
  return {k: result[k] for k in keep if k in result}


def _final_metrics(metrics):
  return {k: float(v) for k, v in (metrics or {}).items() if np.isscalar(v)}


def _stage_functions(config, paths, seeds_cfg, aff_cfg, seg_cfg):
  """{stage: () -> summary dict} (host-only stages return None on processes other than 0)."""
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ppc_jax import stages  # pylint: disable=import-outside-toplevel
  seeds_stage, aff_stage, seg_stage = (stages.of(c) for c in (seeds_cfg, aff_cfg, seg_cfg))

  def data():
    summary = {"data_dir": config.input.data_dir}
    if _is_main():
      summary.update(prepare_data(config, seeds_cfg.input))
    _sync("pipeline data")
    return summary

  def seeds():
    return {"final_metrics": _final_metrics(seeds_stage.train(seeds_cfg, paths.seeds))}

  def cams():
    s = seeds_stage.infer(seeds_cfg, paths.seeds, split=config.refine_split,
                          out_dir=paths.cams_out)
    return {k: s[k] for k in ("num_images", "seconds", "checkpoint_step", "bg_threshold")}

  def seed_eval():
    if not _is_main():
      return None
    return _brief(evaluate.evaluate_cam_dir(config.input.data_dir, config.eval_split, paths.cams,
                                            classes=config.input.classes))

  def crf():
    if config.refine != "affinity":
      return {"skipped": f"refine={config.refine!r}"}
    if _is_main():
      s = aff_stage.labels(paths.cams, config.input.data_dir, config.refine_split, paths.crf,
                           alphas=tuple(config.crf_alphas), classes=config.input.classes,
                           processes=config.crf_processes, progress=config.progress_bar)
    _sync("pipeline crf")
    return {k: s[k] for k in ("num_images", "seconds")} if _is_main() else None

  def affinity():
    if config.refine != "affinity":
      return {"skipped": f"refine={config.refine!r}"}
    return {"final_metrics": _final_metrics(aff_stage.train(aff_cfg, paths.affinity))}

  def masks():
    if config.refine == "affinity":
      aff_stage.infer(aff_cfg, paths.affinity, cam_dir=paths.cams, split=config.refine_split,
                      out_dir=paths.rw_out, evaluate_masks=False)
    _sync("pipeline masks")
    if not _is_main():
      return None
    result = evaluate.evaluate_cam_dir(config.input.data_dir, config.eval_split, paths.masks,
                                       input_type="png", classes=config.input.classes)
    return dict(_brief(result), mask_dir=paths.masks)

  def segment():
    return {"final_metrics": _final_metrics(seg_stage.train(seg_cfg, paths.segment))}

  def segment_eval():
    s = seg_stage.infer(seg_cfg, paths.segment, out_dir=paths.seg_out)
    return {k: s[k] for k in s if k in ("split", "num_images", "seconds", "crf", "result",
                                         "pred_dir")}

  def report():
    if not _is_main():
      return None
    return write_report(config, paths)

  return dict(data=data, seeds=seeds, cams=cams, seed_eval=seed_eval, crf=crf, affinity=affinity,
              masks=masks, segment=segment, segment_eval=segment_eval, report=report)


def prepare_data(config, input_config=None):
  """The data stage: makes the synthetic set where it may, checks the set, logs its class list.

  With `config.input.source='tfds'` (read from `input_config`, a stage's `config.input` with the
  pipeline's ties) the check opens the TFDS set's refine_split instead, whose labels and class
  list the stages read; data_dir's tree is still read for the GT masks (evaluation) and by the
  CRF stage.

  Returns:
    {'synthetic': bool, 'generated': bool, 'classes': [names], 'classes_from': str, 'source'}.

  Raises:
    FileExistsError: a demo config pointed at an existing directory that is not a synthetic set
      (`synth.generate_owned`); FileNotFoundError: no cls_labels.npy, naming the path and the
      command that makes it.
  """
  from ppc_jax.data import synth  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import voc  # pylint: disable=import-outside-toplevel
  data_dir = config.input.data_dir
  generated = False
  if config.synth is not None and (synth.is_generated_here(data_dir) or not fileio.isdir(data_dir)
                                   or not fileio.listdir(data_dir)):
    logging.info("data: the synthetic set of the config at %s", data_dir)
    generated = synth.generate_owned(data_dir, config.synth.to_dict()) == "generated"
  elif config.synth is not None:
    logging.info("data: %s exists and is not a synthetic set made here: reading it as your data "
                 "set (nothing is written there)", data_dir)
  if input_config is not None and input_config.source == "tfds":
    from ppc_jax.data import sources  # pylint: disable=import-outside-toplevel
    opened = sources.open_source(input_config, config.refine_split)
    logging.info("data: images from %s (%d in %s): %d classes: %s", opened.list_path,
                 opened.num_examples, config.refine_split, opened.classes.num_classes,
                 ", ".join(opened.classes.names))
    return {"synthetic": synth.is_generated_here(data_dir), "generated": generated,
            "classes": list(opened.classes.names), "classes_from": opened.list_path,
            "source": "tfds"}
  root = voc.resolve_root(data_dir)
  labels = os.path.join(root, voc.CLS_LABELS_FILE)
  if not fileio.exists(labels):
    raise FileNotFoundError(
        f"{labels}: no image-level labels (cls_labels.npy); make them from the data set's XML "
        f"annotations or masks with: python -m ppc_jax.data.make_cls_labels --voc_root={root}"
        + (f" --classes={config.input.classes}" if config.input.classes else ""))
  classes = voc.load_classes(config.input.classes, data_dir)
  classes_file = os.path.join(root, voc.CLASSES_FILE)
  if config.input.classes:
    source = f"config.input.classes={config.input.classes!r}"
  elif fileio.isfile(classes_file):
    source = classes_file
  else:
    source = f"PASCAL VOC's (no {voc.CLASSES_FILE} in the data set)"
  logging.info("data: %d classes from %s: %s", classes.num_classes, source,
               ", ".join(classes.names))
  return {"synthetic": synth.is_generated_here(data_dir), "generated": generated,
          "classes": list(classes.names), "classes_from": source, "source": "directory"}


def load_marker(path):
  with fileio.open(path) as f:
    return json.load(f)


def run_pipeline(config, workdir, *, stop_after=""):
  """Runs every stage not yet complete; returns {stage: summary}.

  Args:
    config: a pipeline config (configs/pipeline_*.py).
    workdir: the pipeline's work directory.
    stop_after: a stage name: stop once it is complete (for tests and partial runs).
  """
  if stop_after and stop_after not in STAGES:
    raise ValueError(f"stop_after={stop_after!r}: expected one of {STAGES}")
  config = copy.deepcopy(config)
  if not config.input.data_dir:
    if config.synth is None:
      raise ValueError("config.input.data_dir is empty; expected a VOCdevkit/VOC2012 directory")
    config.input.data_dir = default_data_dir(workdir)
  paths = Paths(workdir, config)
  seeds_cfg, aff_cfg, seg_cfg = stage_configs(config, paths)
  fileio.makedirs(paths.state)
  functions = _stage_functions(config, paths, seeds_cfg, aff_cfg, seg_cfg)
  results = {}
  with interrupt.handling_signals("pipeline: SIGTERM/SIGINT now stop the running stage at its "
                                  "next safe point"):
    for stage in STAGES:
      marker = paths.marker(stage)
      if fileio.exists(marker):
        results[stage] = load_marker(marker)
        logging.info("pipeline: %s already complete (%s)", stage, marker)
      else:
        results[stage] = _run_stage(stage, functions[stage], paths)
        # A stop requested during a stage that still reached its end: the stage is complete,
        # the pipeline stops before the next one.
        if interrupt.requested() and stage != STAGES[-1] and stage != stop_after:
          raise interrupt.Interrupted("pipeline", after=f"stage {stage}")
      if stage == stop_after:
        break
  return results


def _attempts_path(paths, stage):
  return os.path.join(paths.state, f"{stage}.attempts.json")


def _run_stage(stage, function, paths):
  """Runs one stage; writes its marker (with its time summed over attempts) when it completes.

  An attempt that ends early (a signal, an error) adds its time to `<stage>.attempts.json` and
  writes no marker; `interrupt.Interrupted` leaves here naming the stage.
  """
  logging.info("pipeline: %s", stage)
  attempts_path = _attempts_path(paths, stage)
  earlier = []
  if _is_main() and fileio.exists(attempts_path):
    earlier = load_marker(attempts_path).get("seconds", [])
  t0 = time.perf_counter()
  try:
    summary = function()
    _sync(f"pipeline {stage} done")
  except BaseException as e:
    if _is_main():
      atomic_io.write_json(attempts_path, {"seconds": earlier + [time.perf_counter() - t0]})
    if isinstance(e, interrupt.Interrupted):
      raise interrupt.Interrupted(f"pipeline stage {stage}: {e.what}", e.done, e.total,
                                  e.unit) from None
    raise
  result = None
  if _is_main():
    attempts = earlier + [time.perf_counter() - t0]
    result = dict(summary or {}, seconds=sum(attempts), attempts=len(attempts))
    atomic_io.write_json(paths.marker(stage), result)
  _sync(f"pipeline {stage} marker")
  return result


# ------------------------------------------------------------------------------------------------
# Report.
# ------------------------------------------------------------------------------------------------

def _pct(x):
  return "" if x is None else f"{100.0 * x:.1f}"


def _paper(value):
  return "" if value is None else f"{value:.1f}"


def write_segmentation_overlays(config, paths, count):
  """Blends the first `count` segmentations of the test split with their images (JPEGs)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import sources  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import voc_meta  # pylint: disable=import-outside-toplevel
  split = config.segment.infer.split
  if not fileio.exists(paths.marker("segment_eval")):
    return []
  pred_dir = load_marker(paths.marker("segment_eval"))["pred_dir"]
  out_dir = os.path.join(paths.seg_out, "overlays")
  fileio.makedirs(out_dir)
  # The images from where the segmentation stage read them (config.input.source).
  seg_input = stage_configs(config, paths)[2].input
  source = sources.open_source(seg_input, split, max_images=count, with_saliency=False,
                                     labels="none")
  palette = np.asarray(voc_meta.palette_bytes(), np.uint8).reshape(-1, 3)
  written = []
  for i, image_id in enumerate(source.ids):
    pred_path = os.path.join(pred_dir, image_id + ".png")
    if not fileio.exists(pred_path):
      continue
    image = source.image(i)
    pred = np.asarray(Image.open(fileio.readable(pred_path)))
    blend = (0.5 * image + 0.5 * palette[pred]).astype(np.uint8)
    path = os.path.join(out_dir, image_id + ".jpg")
    atomic_io.save_image(path, Image.fromarray(np.concatenate([image, blend], axis=1)),
                         quality=90)
    written.append(path)
  return written


def _data_description(config, data):
  """A phrase naming the data set that ran, from the data stage's summary."""
  if data.get("synthetic"):
    return "the synthetic VOC set (made by the data stage)"
  return f"`{config.input.data_dir}`"


def _per_class_rows(results, names):
  """| class | IoU of each result | rows (%), in the class list's order; '-' where the class is
  not in that split's ground truth."""
  rows = []
  for name in names:
    cells = []
    for result in results:
      result = result or {}
      iou = result.get("per_class_iou", {}).get(name)
      absent = "gt_classes" in result and name not in result["gt_classes"]
      cells.append("-" if absent else "" if iou is None or not np.isfinite(iou) else _pct(iou))
    rows.append(f"| {name} | " + " | ".join(cells) + " |")
  return rows


def write_report(config, paths):
  """report.json and report.md in the work directory; returns the report dict."""
  from ppc_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ppc_jax import report as report_lib  # pylint: disable=import-outside-toplevel
  from ppc_jax.data import voc  # pylint: disable=import-outside-toplevel
  stages = {s: load_marker(paths.marker(s)) for s in STAGES[:-1]
            if fileio.exists(paths.marker(s))}
  data = stages.get("data", {})
  classes = data.get("classes") or list(
      voc.load_classes(config.input.classes, config.input.data_dir).names)
  results_of = lambda stage: {k: v for k, v in stages.get(stage, {}).items()  # noqa: E731
                              if k not in ("seconds", "attempts")}
  seed, mask = results_of("seed_eval"), results_of("masks")
  seg = stages.get("segment_eval", {}).get("result", {})
  test_split = config.segment.infer.split
  paper = config.paper.to_dict()
  has_paper = any(v is not None for v in paper.values())
  rows = [
      ("seed", f"{config.eval_split} (best t {seed.get('best_threshold', float('nan')):.2f})",
       seed.get("miou"), seed.get("miou_gt_classes"), paper.get("seed")),
      ("pseudo-mask", config.eval_split, mask.get("miou"), mask.get("miou_gt_classes"),
       paper.get("mask")),
      ("segmentation", f"{test_split}{' + CRF' if config.segment.segment.crf else ''}",
       seg.get("miou"), seg.get("miou_gt_classes"), paper.get("segment_val")),
  ]
  baselines = {}
  if config.baselines:
    for split in dict.fromkeys((config.eval_split, test_split)):
      for kind, r in evaluate.evaluate_baselines(config.input.data_dir, split,
                                                 classes=config.input.classes).items():
        baselines[f"{kind} ({split})"] = _brief(r)
        rows.append((f"baseline: {evaluate.BASELINE_DESCRIPTIONS[kind]}", split, r["miou"],
                     r["miou_gt_classes"], None))
  seg_overlays = write_segmentation_overlays(config, paths, config.num_overlays)
  cam_dir = os.path.join(paths.cams_out, "overlays")
  cam_overlays = sorted(fileio.listdir(cam_dir))[:config.num_overlays] if fileio.isdir(
      cam_dir) else []
  lines = [f"# {config.name}, on {_data_description(config, data)}", "",
           f"- **data**: {config.input.data_dir}" + (
               f" (images from the TFDS set {data.get('classes_from')})"
               if data.get("source") == "tfds" else ""),
           f"- **classes** ({len(classes)}, from {data.get('classes_from', 'the data set')}): "
           + ", ".join(classes),
           f"- **refinement**: {config.refine}",
           f"- **machine**: {report_lib.machine_description()}",
           f"- **work directory**: {paths.workdir}", "",
           "## mIoU (%)", "",
           "| output | split | mIoU (all classes) | mIoU (classes in GT) |"
           + (" paper |" if has_paper else ""),
           "|---|---|---|---|" + ("---|" if has_paper else "")]
  for name, split, miou, miou_gt, ref in rows:
    lines.append(f"| {name} | {split} | {_pct(miou)} | {_pct(miou_gt)} |"
                 + (f" {_paper(ref)} |" if has_paper else ""))
  lines += ["", f"'all classes' averages IoU over the {len(classes)} classes of the class list "
            "(the reference's formula; a class absent from the split scores 0); 'classes in GT' "
            "over the classes its ground truth contains."]
  if has_paper:
    lines.append(f"Paper numbers: {config.paper_source}.")
  lines += ["", "## Per-class IoU (%)", "",
            f"| class | seed ({config.eval_split}) | pseudo-mask ({config.eval_split}) | "
            f"segmentation ({test_split}) |", "|---|---|---|---|"]
  lines += _per_class_rows((seed, mask, seg), classes)
  lines += ["", "-: the class is not in that split's ground truth (it counts 0 in the all-class "
            "mean).",
            "", "## Time per stage (s, all attempts)", "", "| stage | seconds | attempts |",
            "|---|---|---|"]
  for s, summary in stages.items():
    lines.append(f"| {s} | {summary.get('seconds', 0.0):.0f} | {summary.get('attempts', 1)} |")
  if cam_overlays:
    lines += ["", "## CAM overlays", "", " ".join(
        f"![{o}]({os.path.relpath(os.path.join(cam_dir, o), paths.workdir)})"
        for o in cam_overlays)]
  if seg_overlays:
    lines += ["", "## Segmentations (image | prediction)", "", " ".join(
        f"![{os.path.basename(p)}]({os.path.relpath(p, paths.workdir)})" for p in seg_overlays)]
  atomic_io.write_text(os.path.join(paths.workdir, "report.md"), "\n".join(lines) + "\n")
  out = {"name": config.name, "data_dir": config.input.data_dir, "classes": classes,
         "seed": seed, "mask": mask, "segmentation": seg, "paper": paper, "baselines": baselines,
         "seconds": {s: v.get("seconds") for s, v in stages.items()},
         "attempts": {s: v.get("attempts", 1) for s, v in stages.items()}}
  atomic_io.write_json(os.path.join(paths.workdir, "report.json"), out)
  return {"seed_miou": seed.get("miou"), "mask_miou": mask.get("miou"),
          "segment_miou": seg.get("miou"), "seed_miou_gt_classes": seed.get("miou_gt_classes"),
          "mask_miou_gt_classes": mask.get("miou_gt_classes"),
          "segment_miou_gt_classes": seg.get("miou_gt_classes"), "baselines": baselines}


# ------------------------------------------------------------------------------------------------
# Entry point.
# ------------------------------------------------------------------------------------------------

def _define_flags():
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Pipeline config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "The pipeline's work directory.")
  flags.DEFINE_string("stop_after", "", "Stop once this stage is complete.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from ppc_jax import runtime  # pylint: disable=import-outside-toplevel
  config = flags.FLAGS.config
  runtime.setup_host(config.seeds)
  results = run_pipeline(config, flags.FLAGS.workdir, stop_after=flags.FLAGS.stop_after)
  if "report" in results:
    r = results["report"]
    print(f"seed mIoU {_pct(r.get('seed_miou'))}%, mask mIoU {_pct(r.get('mask_miou'))}%, "
          f"segmentation mIoU {_pct(r.get('segment_miou'))}%: "
          f"{os.path.join(flags.FLAGS.workdir, 'report.md')}")


def cli():
  """The console script `ppc-pipeline` (pyproject.toml): `python -m ppc_jax.pipeline`."""
  from ppc_jax import entry  # pylint: disable=import-outside-toplevel
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
