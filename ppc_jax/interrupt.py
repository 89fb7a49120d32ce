"""Stopping a run on SIGTERM / SIGINT at a safe point, and saying so.

One process-wide flag. A long-running piece of work (the training loop, an inference loop, the
pipeline) installs the handlers with `handling_signals(...)`; installs nest and share the flag, so
a signal that stops a trainer inside the pipeline also stops the pipeline. The work polls
`requested()` at its stop points (after a step, between images), leaves with `Interrupted` after
saving what it has, and the entry point exits with `EXIT_INTERRUPTED`. A second SIGINT stops at
once (Ctrl-C twice aborts a long compile); repeated SIGTERMs change nothing.

Nothing that stopped early is reported as complete: `Interrupted` propagates through every
caller, so no completion marker is written after it.
"""

import contextlib
import signal

from absl import logging

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry".
EXIT_INTERRUPTED = 75

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """A run stopped by a signal before its end; everything done so far is saved.

  Attributes:
    what: the work that stopped ('AffinityNet training', 'CAM inference', ...).
    done, total: how far it got, in `unit`s (None when unknown).
    unit: 'step' or 'image'.
    after: instead of done / total, what was complete when it stopped ('stage seeds').
  """

  def __init__(self, what, done=None, total=None, unit="step", after=None):
    self.what, self.done, self.total, self.unit = what, done, total, unit
    where = f" at {unit} {done} of {total}" if done is not None else ""
    where += f" after {after}" if after else ""
    super().__init__(f"{what} interrupted{where}; rerun to resume")


class _State:
  depth = 0
  raised = False
  sigints = 0
  previous = {}


def requested():
  """Whether SIGTERM / SIGINT arrived since the outermost `handling_signals` began."""
  return _State.raised


def check(what, done=None, total=None, unit="step"):
  """Raises `Interrupted(what, done, total, unit)` when a stop was requested."""
  if _State.raised:
    raise Interrupted(what, done, total, unit)


def _handler(signum, frame):
  del frame
  if signum == signal.SIGINT:
    _State.sigints += 1
    if _State.sigints > 1:
      logging.warning("second SIGINT: stopping at once")
      _restore_previous()
      signal.raise_signal(signum)
      return
  if not _State.raised:
    logging.warning("signal %d received: stopping at the next safe point", signum)
  _State.raised = True


def _restore_previous():
  for sig, handler in _State.previous.items():
    # None: the previous handler was not set from Python (nothing to put back).
    signal.signal(sig, signal.SIG_DFL if handler is None else handler)
  _State.previous = {}


@contextlib.contextmanager
def handling_signals(message):
  """Within the block SIGTERM / SIGINT set the stop flag instead of killing the process.

  Args:
    message: logged once the handlers are in place, e.g. 'SIGTERM/SIGINT now save a checkpoint
      and stop' (a signal sent after this line is never lost).

  Outside the main thread (a notebook worker) no handler can be installed; the block then runs
  without one. The outermost block resets the flag on entry and on exit.
  """
  if _State.depth == 0:
    _State.raised, _State.sigints = False, 0
    for sig in _SIGNALS:
      try:
        _State.previous[sig] = signal.signal(sig, _handler)
      except ValueError:  # not the main thread
        pass
  _State.depth += 1
  if _State.previous:
    logging.info("%s (a second Ctrl-C: at once)", message)
  try:
    yield
  finally:
    _State.depth -= 1
    if _State.depth == 0:
      _restore_previous()
      _State.raised, _State.sigints = False, 0
