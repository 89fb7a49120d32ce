"""Running a command-line entry point (train, infer, evaluate, demo) so that it always exits.

`run(main)` is `absl.app.run(main)` with two guarantees for an error anywhere in `main`:

  * The process ends with status 1 and the error printed: the traceback, then one line
    `error: <type>: <message>` (a data error's message names the file).
  * The exit does not hang. The hang this prevents is an exception kept alive past the end of
    `main`: Python keeps an uncaught exception (in sys.last_value) until it finalises,
    and its traceback frames can keep a tf.data iterator alive whose destructor, run during
    finalisation, waits forever for host threads that can no longer take the GIL (see
    data/pipeline.py). Here the exception is handled inside `run`, so it and its frames are
    freed, and every resource they held is destroyed, while the interpreter is still whole.
    As a second line of defence, a watchdog (faulthandler's C thread: it needs no GIL, so it
    works during finalisation too) dumps every thread's stack and ends the process with status 1
    if the exit takes longer than EXIT_GRACE_S. It is armed when `main` returns or fails, so it
    bounds only the shutdown (orbax, TensorBoard and thread-pool teardown), never the work.

A success still exits 0, an override of a field the config does not declare 2 (naming the
config's stage and the field), a usage error 1 with absl's usage text, SystemExit and KeyboardInterrupt
pass through unchanged (a second Ctrl-C during training still stops at once). A run stopped by
SIGTERM / SIGINT at a safe point (`interrupt.Interrupted`) exits with `EXIT_INTERRUPTED` (75) and
one line `interrupted: <what> interrupted at step s of T; rerun to resume`.
"""

import faulthandler
import gc
import os
import sys
import traceback

from absl import app
from absl import logging

from ppc_jax import interrupt

# Shutdown after `main` is short (thread pools, orbax's and TensorBoard's writers are already
# closed by then); 120 s is generous for a loaded machine and short next to a hang that would
# otherwise hold a CI job or a cluster slot until its own timeout. The environment variable
# PPC_JAX_EXIT_GRACE_S overrides it (tests of the watchdog itself).
EXIT_GRACE_S = 120.0
# The first line faulthandler writes when the watchdog fires (then every thread's stack).
WATCHDOG_MARKER = "Timeout ("


def _arm_exit_watchdog():
  """Dumps all stacks and _exit(1)s if the process is still alive EXIT_GRACE_S from now."""
  grace = float(os.environ.get("PPC_JAX_EXIT_GRACE_S", EXIT_GRACE_S))
  try:
    faulthandler.dump_traceback_later(grace, exit=True, file=sys.__stderr__)
  except (ValueError, AttributeError, OSError):  # no usable stderr (e.g. closed): no watchdog
    pass


def guarded(main):
  """Wraps `main(argv)`: errors become status 1 with the error printed, exits are bounded."""

  def wrapped(argv):
    try:
      result = main(argv)
    except (SystemExit, KeyboardInterrupt, app.UsageError):
      _arm_exit_watchdog()
      raise
    except interrupt.Interrupted as e:
      logging.warning("interrupted: %s", e)
      print(f"interrupted: {e}", file=sys.stderr, flush=True)
      status = interrupt.EXIT_INTERRUPTED
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      logging.error("error: %s: %s", type(e).__name__, e)
      status = 1
    else:
      status = result
    # The handled exception (and the frames its traceback held) is gone here; collect the cycles
    # tracebacks form so that what they referenced is destroyed now, not at finalisation.
    gc.collect()
    _arm_exit_watchdog()
    return status

  return wrapped


def run(main):
  """absl.app.run(main) with the guarantees of this module's docstring. An override of a field
  that the config does not have (`--config.loss.variant=cam` on a segmentation config) exits 2
  with one line naming the config's stage and the field, before any flag is parsed."""
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  try:
    config_lib.check_overrides(sys.argv)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(guarded(main))
