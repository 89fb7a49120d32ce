r"""Stage-2 CRF outputs of a split: la / ha CRF score dicts and, optionally, seed-CRF PNGs.

  python -m ppc_jax.refine.crf_labels --cam_dir=runs/ppc/infer_train_aug/cams \
      --voc_root=PATH --split=train_aug --out_dir=runs/ppc/crf [--alphas=4,24] [--processes=N] \
      [--seed_crf_png] [--iterations=10] [--cam_format=npz] [--score_format=npz]

Reads the stage-1 cam files (`<cam_dir>/<id>.npz`, `cam_io.load_cam_dict`; with
--cam_format=reference_npy the reference's pickled `<id>.npy` cam_dicts, through the restricted
unpickler) and the JPEGs of every id of the split, and writes, per image (`ppc_jax.refine.crf`,
METHOD 4.1 / 4.3):

  crf_la/<id>.npz    {0: bg, k + 1: class k} CRF marginals with bg = (1 - max)^alpha_la, in the cam
                     files' npz format (keys int [K] + maps float32 [K, H, W], no pickle;
                     --score_format=reference_npy: the reference's np.save'd dict `<id>.npy`)
  crf_ha/<id>.npz    the same with alpha_ha (SEAM: 4 and 24; PSA: 4 and 32), AffinityNet's labels
  crf_a<alpha>/<id>.npz   instead of crf_la / crf_ha when --alphas has one value: the score dicts
                     of that one power (the `esp` branch's EPS+PPC `crf_<t>_<alpha>` npys:
                     --alphas=8 --iterations=5; configs/masks_eps_ppc_voc12.py)
  crf_seed/<id>.png  with --seed_crf_png: the reference's CRF seed mask (bg 0.26, label CRF),
                     VOC palette PNG like the inference seeds
  crf_params.json    the settings of this output directory
  crf_summary.json   what the last run did

(`crf.load_scores(path, num_classes)` reads the score dicts back; the reference's `np.load(...,
allow_pickle=True).item()` reads those written with --score_format=reference_npy.) Every file is
written atomically, so an interrupted run resumes: images whose outputs all exist (in the output
format) are skipped, and a directory made with other settings (crf_params.json, the output format
included) is refused instead of mixed. Images run in parallel in --processes worker
processes (spawned, never forked: the parent may hold JAX / TF threads); the first failing image
ends the command with status 1 and an error naming it (a worker that dies is reported too).
"""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import signal
import time
import traceback

from absl import app
from absl import flags
from absl import logging
import numpy as np
import PIL.Image
import tqdm

from ppc_jax import atomic_io
from ppc_jax import fileio
from ppc_jax import interrupt
from ppc_jax.data import cam_io
from ppc_jax.data import voc
from ppc_jax.data import voc_meta
from ppc_jax.refine import crf

LA_DIR = "crf_la"
HA_DIR = "crf_ha"
SEED_DIR = "crf_seed"
PARAMS_FILE = "crf_params.json"
SUMMARY_FILE = "crf_summary.json"


class CrfImageError(RuntimeError):
  """An image failed; the message starts with its id (or the candidates, if a worker died)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What decides the outputs' values (kept in crf_params.json)."""
  la_alpha: float
  ha_alpha: float  # None: one alpha, one crf_a<alpha> directory (score_dirs)
  iterations: int
  seed_bg_threshold: float
  num_classes: int
  score_format: str = cam_io.NPZ  # the score files' format (cam_io.FORMATS): decides the names

  def as_json(self):
    return dict(dataclasses.asdict(self), softmax_crf=crf.SOFTMAX_CRF, label_crf=crf.LABEL_CRF,
                gt_prob=crf.GT_PROB)


@dataclasses.dataclass(frozen=True)
class Job:
  """One image's work: only plain, picklable fields (it crosses to a worker process)."""
  image_id: str
  image_path: str
  cam_path: str
  outputs: tuple  # ((kind, path), ...) for the outputs still missing; kind in la / ha / seed
  settings: Settings
  cam_format: str = cam_io.NPZ  # the format of cam_path (cam_io.FORMATS)


def score_dirs(settings):
  """[(kind, directory name)] of the score dicts: crf_la / crf_ha for two alphas (AffinityNet's
  labels), one crf_a<alpha> for a single alpha (kind 'la': it uses la_alpha)."""
  if settings.ha_alpha is None:
    return [("la", f"crf_a{_number(settings.la_alpha)}")]
  return [("la", LA_DIR), ("ha", HA_DIR)]


def _save_label_png(path, label_map):
  """VOC palette PNG, as `cam_postprocess.save_label_png` (which imports JAX; workers do not)."""
  img = PIL.Image.fromarray(np.asarray(label_map, np.uint8), mode="P")
  img.putpalette(voc_meta.palette_bytes())
  atomic_io.atomic_write(path, lambda f: img.save(f, format="PNG"), ".png")


def process_image(job):
  """Writes one image's missing outputs. Never raises: errors come back as plain strings.

  A worker's exception would be pickled back to the parent, and exceptions whose __init__ takes
  other arguments than their message (e.g. `untrusted.UntrustedFileError`) fail to unpickle there;
  strings always arrive.

  Returns:
    dict(image_id, seconds, error=None) or dict(image_id, error='Type: message', traceback=str).
  """
  t0 = time.perf_counter()
  s = job.settings
  try:
    cam_dict = cam_io.load_cam_dict(job.cam_path, num_fg=s.num_classes - 1, fmt=job.cam_format)
    image = voc.read_image(job.image_path)
    name = f"image {job.image_id} ({job.image_path}; cam file {job.cam_path})"
    for kind, path in job.outputs:
      if kind == "seed":
        labels = crf.seed_crf(cam_dict, image, s.num_classes, bg_threshold=s.seed_bg_threshold,
                              iterations=s.iterations, name=name)
        _save_label_png(path, labels)
      else:
        alpha = s.la_alpha if kind == "la" else s.ha_alpha
        crf.save_scores(path, crf.la_ha_scores(cam_dict, image, alpha, iterations=s.iterations,
                                               name=name), fmt=s.score_format)
  except Exception as e:  # pylint: disable=broad-except  (reported by the parent, with the id)
    return dict(image_id=job.image_id, error=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc())
  return dict(image_id=job.image_id, seconds=time.perf_counter() - t0, error=None)


def _raise_failure(result):
  logging.error("worker traceback for image %s:\n%s", result["image_id"],
                result.get("traceback", ""))
  raise CrfImageError(f"image {result['image_id']}: {result['error']}")


def _number(value):
  value = float(value)
  return int(value) if value.is_integer() else value


def _check_params(out_dir, settings):
  """Writes crf_params.json, or refuses a directory made with other settings."""
  path = os.path.join(out_dir, PARAMS_FILE)
  want = settings.as_json()
  if fileio.exists(path):
    try:
      with fileio.open(path) as f:
        have = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: cannot read ({e}); delete it if the outputs next to it may be "
                       "redone") from e
    if have != json.loads(json.dumps(want)):
      diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
      raise ValueError(f"{path}: this output directory was made with other settings "
                       f"(name: (there, now) = {diff}); use another --out_dir, or delete the "
                       "directory to redo it")
  else:
    atomic_io.write_json(path, want)


def make_jobs(cam_dir, voc_root, split, out_dir, settings, *, seed_crf_png=False, max_images=0,
              cam_format=cam_io.NPZ):
  """(all ids, jobs of the images with missing outputs; cam files `<id>` + cam_format's extension).

  Raises:
    FileNotFoundError naming the missing cam files (all checked before any work starts).
    voc.DataError for a missing or malformed split list.
  """
  root = voc.resolve_root(voc_root)
  ids = voc.split_ids(root, split, max_images=max_images)
  present = set(fileio.listdir(cam_dir)) if fileio.isdir(cam_dir) else None
  if present is None:
    raise FileNotFoundError(f"{cam_dir}: cam directory not found; run stage-1 inference "
                            f"(python -m ppc_jax.seeds.infer --split={split}) first")
  missing = [i for i in ids if cam_io.file_name(i, cam_format) not in present]
  if missing:
    other = cam_io.other_format(cam_format)
    twins = sum(cam_io.file_name(i, other) in present for i in missing)
    hint = (f"; {twins} of them are there in the {other} format instead: "
            f"{cam_io.format_advice(cam_format)}" if twins else "")
    raise FileNotFoundError(
        f"{cam_io.file_path(cam_dir, missing[0], cam_format)}: cam file not found "
        f"({len(missing)} of {len(ids)} ids of split {split!r} have none, e.g. "
        f"{', '.join(missing[:5])}); run stage-1 inference on that split first{hint}")
  score_ext = cam_io.EXTENSIONS[cam_io.check_format(settings.score_format)]
  kinds = [(kind, d, score_ext) for kind, d in score_dirs(settings)]
  if seed_crf_png:
    kinds.append(("seed", SEED_DIR, ".png"))
  done = {d: fileio.names_in(os.path.join(out_dir, d)) for _, d, _ in kinds}
  jobs = []
  for image_id in ids:
    outputs = tuple((kind, os.path.join(out_dir, d, image_id + ext)) for kind, d, ext in kinds
                    if image_id + ext not in done[d])
    if outputs:
      jobs.append(Job(image_id, os.path.join(root, voc.IMAGE_DIR, image_id + ".jpg"),
                      cam_io.file_path(cam_dir, image_id, cam_format), outputs, settings,
                      cam_format))
  return ids, jobs


def _ignore_sigint():
  # A terminal's Ctrl-C reaches the whole process group: the parent stops the run cleanly
  # (ppc_jax.interrupt), so the workers finish their image instead of dying mid-write.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_jobs(jobs, processes, progress):
  """Runs the jobs (in-process for processes <= 1); raises CrfImageError at the first failure."""
  if processes <= 1:
    for n, job in enumerate(jobs):
      interrupt.check("CRF", n, len(jobs), unit="image")
      result = process_image(job)
      if result["error"]:
        _raise_failure(result)
      progress.update(1)
    return
  # spawn: a forked child of a process with JAX / TF threads can deadlock on their locks.
  context = multiprocessing.get_context("spawn")
  # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies (a crash in the C++ code,
  # the OOM killer) breaks the executor and raises here, where Pool would wait forever.
  pool = concurrent.futures.ProcessPoolExecutor(max_workers=processes, mp_context=context,
                                               initializer=_ignore_sigint)
  try:
    futures = {pool.submit(process_image, job): job.image_id for job in jobs}
    unfinished = dict.fromkeys(job.image_id for job in jobs)  # in submission order
    for future in concurrent.futures.as_completed(futures):
      try:
        result = future.result()
      except concurrent.futures.process.BrokenProcessPool as e:
        # Which image's worker died is not known: name the first ones still unfinished (the
        # pool hands out images in submission order, at most processes + 1 ahead of the
        # results, so it is normally among them).
        first = list(unfinished)[:2 * processes]
        raise CrfImageError(
            f"one of the images {', '.join(first)}: a worker process died (killed, out of "
            f"memory, or a crash in native code); {e}") from e
      unfinished.pop(futures[future], None)
      if result["error"]:
        _raise_failure(result)
      progress.update(1)
      # The images already finished are written; queued ones are dropped below.
      interrupt.check("CRF", progress.n, len(jobs), unit="image")
  finally:
    # On an error: drop the queued images, wait only for those already running.
    pool.shutdown(wait=True, cancel_futures=True)


def run(cam_dir, voc_root, split, out_dir, *, alphas=(crf.LA_ALPHA, crf.HA_ALPHA), processes=0,
        seed_crf_png=False, seed_bg_threshold=crf.SEED_BG_THRESHOLD, iterations=crf.ITERATIONS,
        classes="", max_images=0, progress=True, cam_format=cam_io.NPZ,
        score_format=cam_io.NPZ):
  """Writes the CRF outputs of every image of a split (see the module docstring).

  Args:
    cam_dir: directory of stage-1 cam files (`<id>.npz`; `<id>.npy` for the reference format).
    voc_root: the VOC2012 directory (or one holding VOCdevkit/VOC2012).
    split: split name or list file (`voc.find_list_file`).
    out_dir: output directory.
    alphas: (la alpha, ha alpha), la < ha; or (alpha,): one crf_a<alpha> directory.
    processes: worker processes; 0 = the CPUs this process may use; 1 = no workers.
    seed_crf_png: also write the seed-CRF PNGs.
    seed_bg_threshold: the seeds' background score.
    iterations: mean-field iterations of every CRF.
    classes: the class list (`voc.load_classes` spec; '' = voc_root's classes.txt, else VOC).
    max_images: > 0: only the first N ids.
    progress: show a progress bar.
    cam_format: the cam files' format: 'npz' (ppc_jax's) or 'reference_npy' (the reference's
      pickled dicts, read through the restricted unpickler).
    score_format: the format the score files are written in ('npz' or 'reference_npy').

  Returns:
    summary dict.
  """
  alphas = tuple(_number(a) for a in alphas)
  if not ((len(alphas) == 2 and 0 < alphas[0] < alphas[1]) or
          (len(alphas) == 1 and alphas[0] > 0)):
    raise ValueError(f"alphas must be two numbers 0 < la < ha (la: the low power, more "
                     f"background) or one number > 0, got {alphas}")
  classes = voc.load_classes(classes, voc_root)
  settings = Settings(la_alpha=alphas[0], ha_alpha=alphas[1] if len(alphas) == 2 else None,
                      iterations=int(iterations),
                      seed_bg_threshold=float(seed_bg_threshold),
                      num_classes=classes.num_classes,
                      score_format=cam_io.check_format(score_format))
  if processes <= 0:
    processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
  ids, jobs = make_jobs(cam_dir, voc_root, split, out_dir, settings, seed_crf_png=seed_crf_png,
                        max_images=max_images, cam_format=cam_io.check_format(cam_format))
  fileio.makedirs(out_dir)
  _check_params(out_dir, settings)
  processes = max(1, min(processes, len(jobs)))
  logging.info("CRF on %d of %d images of %s (%d already done), %d process(es)", len(jobs),
               len(ids), split, len(ids) - len(jobs), processes)
  t0 = time.perf_counter()
  with interrupt.handling_signals("CRF: SIGTERM/SIGINT now stop after the current images"), \
      tqdm.tqdm(total=len(jobs), desc=f"crf {split}", unit="img", disable=not progress) as bar:
    _run_jobs(jobs, processes, bar)
  summary = dict(split=split, num_images=len(ids), computed=len(jobs),
                 seconds=time.perf_counter() - t0, processes=processes, cam_dir=cam_dir,
                 out_dir=out_dir, seed_crf_png=bool(seed_crf_png), classes=list(classes.names),
                 cam_format=cam_format,
                 **settings.as_json())
  atomic_io.write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
  return summary


# ------------------------------------------------------------------------------------------------
# Entry point.
# ------------------------------------------------------------------------------------------------

def _define_flags():
  flags.DEFINE_string("cam_dir", None, "Directory of stage-1 cam files (<id>.npz).")
  flags.DEFINE_string("voc_root", None, "The VOC2012 directory (or one holding "
                                        "VOCdevkit/VOC2012).")
  flags.DEFINE_string("split", "train_aug", "Split list (ImageSets/Segmentation/<split>.txt).")
  flags.DEFINE_string("out_dir", None, "Output directory (crf_la/, crf_ha/, crf_seed/).")
  flags.DEFINE_list("alphas", [str(crf.LA_ALPHA), str(crf.HA_ALPHA)],
                    "la,ha background powers: bg = (1 - max CAM)^alpha (SEAM 4,24; PSA 4,32); "
                    "one value writes crf_a<alpha>/ only (EPS+PPC's esp script: 8, with "
                    "--iterations=5).")
  flags.DEFINE_integer("processes", 0, "Worker processes (0: one per usable CPU; 1: none).")
  flags.DEFINE_bool("seed_crf_png", False, "Also write the reference's CRF seed PNGs "
                                           "(bg --seed_bg_threshold, label CRF).")
  flags.DEFINE_float("seed_bg_threshold", crf.SEED_BG_THRESHOLD, "Background score of the seeds.")
  flags.DEFINE_integer("iterations", crf.ITERATIONS, "Mean-field iterations of every CRF.")
  flags.DEFINE_string("classes", "", "The class list, as config.input.classes: '' = voc_root's "
                                     "classes.txt, else VOC's 20.")
  flags.DEFINE_integer("max_images", 0, "> 0: only the first N ids of the split.")
  flags.DEFINE_enum("cam_format", cam_io.NPZ, list(cam_io.FORMATS),
                    "Format of the cam files: npz (<id>.npz, ppc_jax's) or reference_npy (the "
                    "reference's pickled <id>.npy dicts, read through the restricted unpickler).")
  flags.DEFINE_enum("score_format", cam_io.NPZ, list(cam_io.FORMATS),
                    "Format of the la / ha score files written: npz or reference_npy (the "
                    "reference's np.save'd dicts, for its scripts).")
  flags.mark_flags_as_required(["cam_dir", "voc_root", "out_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    alphas = [float(a) for a in f.alphas]
  except ValueError as e:
    raise app.UsageError(f"--alphas must be numbers, got {f.alphas}") from e
  summary = run(f.cam_dir, f.voc_root, f.split, f.out_dir, alphas=alphas,
                processes=f.processes, seed_crf_png=f.seed_crf_png,
                seed_bg_threshold=f.seed_bg_threshold, iterations=f.iterations,
                classes=f.classes, max_images=f.max_images, cam_format=f.cam_format,
                score_format=f.score_format)
  logging.info("CRF done: %s", summary)
  print(json.dumps(summary, indent=2))


def cli():
  """The console script `ppc-crf-labels` (pyproject.toml): `python -m ppc_jax.refine.crf_labels`."""
  from ppc_jax import entry  # pylint: disable=g-import-not-at-top
  _define_flags()
  entry.run(main)


if __name__ == "__main__":
  cli()
