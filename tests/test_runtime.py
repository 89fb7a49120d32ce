"""runtime.configure_xla_cpu: the entry points' XLA:CPU flags, without overriding the user's."""

import importlib.metadata
import os

import pytest

from ppc_jax import runtime


@pytest.fixture(autouse=True)
def _installed_jaxlib_is_known(monkeypatch):
  """The flag logic under test, whichever jaxlib runs the tests (requirements pin the known one)."""
  monkeypatch.setattr(runtime, "CPU_XLA_FLAGS_JAXLIB", (importlib.metadata.version("jaxlib"),))


def test_adds_every_cpu_flag_once(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  runtime.configure_xla_cpu()
  runtime.configure_xla_cpu()
  flags = os.environ["XLA_FLAGS"].split()
  assert flags[0] == "--xla_force_host_platform_device_count=4"
  assert sorted(flags[1:]) == sorted(runtime.CPU_XLA_FLAGS)


def test_keeps_a_flag_the_user_set(monkeypatch):
  name = runtime.CPU_XLA_FLAGS[1].split("=")[0]
  monkeypatch.setenv("XLA_FLAGS", f"{name}=true")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  runtime.configure_xla_cpu()
  flags = os.environ["XLA_FLAGS"].split()
  assert f"{name}=true" in flags and runtime.CPU_XLA_FLAGS[1] not in flags
  assert runtime.CPU_XLA_FLAGS[0] in flags


def test_opt_out_leaves_jax_defaults(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("PPC_JAX_CPU_FLAGS", "0")
  runtime.configure_xla_cpu()
  assert os.environ["XLA_FLAGS"] == ""


def test_other_jaxlib_releases_keep_their_defaults(monkeypatch):
  """XLA aborts on unknown flags: a jaxlib the flags were not measured with gets none."""
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  monkeypatch.setattr(runtime, "CPU_XLA_FLAGS_JAXLIB", ("0.0.0",))
  runtime.configure_xla_cpu()
  assert os.environ["XLA_FLAGS"] == ""


def test_config_switch_off(monkeypatch):
  """configs set `xla_cpu_flags=False` (the demo does) to keep JAX's defaults."""
  from ppc_jax import config_lib  # pylint: disable=import-outside-toplevel
  assert config_lib.base_config().xla_cpu_flags is True
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("PPC_JAX_CPU_FLAGS", raising=False)
  runtime.configure_xla_cpu(enabled=False)
  assert os.environ["XLA_FLAGS"] == ""
