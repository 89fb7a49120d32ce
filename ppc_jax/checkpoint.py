"""Orbax checkpointing of the train state, in one module so an Orbax API change is a one-file edit.

Saves are atomic (Orbax writes to a temporary directory and renames on commit; on GCS it writes
a commit_success.txt file last), asynchronous, and every process calls `save` (a save called only
on process 0 hangs multi-host runs). The data order needs no saved iterator: the input pipeline is
a pure function of (seed, step), so restoring the step restores the data position.
"""

import jax
import orbax.checkpoint as ocp

from ppc_jax import fileio

STATE, META = "state", "meta"


class Checkpointer:
  """Owns an `ocp.CheckpointManager` under `<workdir>/checkpoints`.

  Use as a context manager (or call `close()`): an unclosed manager hangs the process at exit.
  """

  def __init__(self, workdir, *, every_steps, max_to_keep=3, async_save=True):
    self.directory = fileio.join(fileio.abspath(workdir), "checkpoints")
    self.every_steps = int(every_steps)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=1,  # the trainer decides when; see maybe_save
            enable_async_checkpointing=async_save,
            create=True,
        ),
        item_names=(STATE, META),
    )

  def latest_step(self):
    return self._manager.latest_step()

  def uncommitted(self):
    """Paths of saves that started and never committed (a process killed mid-save), which orbax
    ignores: locally `<step>.orbax-checkpoint-tmp-<time>` directories, on GCS step directories
    without orbax's commit_success.txt. Orbax replaces one when it saves that step again."""
    return sorted(str(p.get()) for p in ocp.path.step.all_temporary_paths(self.directory))

  def due(self, step):
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step, state, meta=None):
    """Saves `state` (a tree of jax.Arrays) at `step`; returns once the save is started."""
    self._manager.save(
        int(step),
        args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            META: ocp.args.JsonSave(dict(meta or {}, step=int(step))),
        }),
        force=True)

  def restore(self, abstract_state, step=None):
    """Restores the state at `step` (default latest) into the shardings of `abstract_state`.

    Args:
      abstract_state: a tree of `jax.ShapeDtypeStruct` with `.sharding` set (e.g. from
        `jax.eval_shape` + the target shardings), or of concrete arrays.
      step: which step; None for the latest.

    Returns:
      (state, meta dict).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state),
            META: ocp.args.JsonRestore(),
        }))
    return restored[STATE], dict(restored[META] or {})

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` placed with one `sharding` (e.g. replicated) for restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
