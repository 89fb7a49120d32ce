# Each target sets up what it needs: a venv in .venv with the pinned requirements.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
WORKDIR ?= runs/demo

.PHONY: demo test test-fast bench compare method-effects device-check-tiny pretrain-demo clean

$(RUNTIME): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(DEV): $(RUNTIME) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The whole pipeline on the synthetic VOC set (configs/pipeline_demo.py): SEAM+PPC seeds, CRF +
# AffinityNet + random walk pseudo-masks, DeepLab segmentation of val; runs/demo/report.md.
# Fails unless the seed mIoU beats both trivial baselines by 3 points (ppc_jax.demo's
# --check_margin, default 0.03); `make demo DEMO_FLAGS=--check_margin=-1` skips that check.
demo: $(RUNTIME)
	$(PY) -m ppc_jax.demo --workdir=$(WORKDIR) $(DEMO_FLAGS)

# The full test suite on 8 fake CPU devices. A worker that dies ends the run with an error
# (--max-worker-restart=0): pytest-xdist 3.8 can wait forever after restarting one under
# --dist loadgroup.
# --capture=sys: Python output is still captured per test, but what C++ code writes to the
# process's stderr (XLA's LOG(FATAL) line before an abort) reaches the log instead of dying with
# the worker in pytest's per-test capture file (a few TF/absl start-up lines per worker appear).
test: $(DEV)
	$(PY) -m pytest -q -n 2 --dist loadgroup --max-worker-restart=0 --capture=sys tests

# The fast tier: unit and parity tests (tests/conftest.py TIERS); end-to-end and integration tests
# (pipelines, other processes, the bucket emulator, the wheel, the notebook) are left out.
test-fast: $(DEV)
	$(PY) -m pytest -q -n 2 --dist loadgroup --max-worker-restart=0 --capture=sys -m "unit or parity" tests

# Stage 0 at the demo's size: the synthetic 48-class pretext set, then the demo's ResNet38
# pretrained on it (configs/pretrain_demo.py, a few minutes on 2 cores; docs/pretrain.md). Later
# stages take it with --config.init.backbone_workdir=$(PRETRAIN_WORKDIR)/train.
PRETRAIN_WORKDIR ?= runs/pretrain_demo
pretrain-demo: $(RUNTIME)
	test -f $(PRETRAIN_WORKDIR)/data/synth_classes.json || \
	  $(PY) -m ppc_jax.data.synth_classes --out $(PRETRAIN_WORKDIR)/data
	$(PY) -m ppc_jax.train --config=configs/pretrain_demo.py:data_dir=$(PRETRAIN_WORKDIR)/data \
	  --workdir=$(PRETRAIN_WORKDIR)/train

# Benchmarks (print tables; never run in CI).
bench: $(DEV)
	$(PY) bench/data_pipeline.py
	$(PY) bench/speed.py

# Every case of bench/device_check.py at tiny sizes on the CPU, as an accelerator host without
# TensorFlow runs it at full size (docs/device_check.md).
device-check-tiny: $(RUNTIME)
	$(PY) bench/device_check.py --tiny --jobs 2 --out runs/device_check_tiny.json

# CAM-only vs SEAM vs SEAM+PPC on the synthetic set, several seeds (a study: experiments/).
compare: $(RUNTIME)
	$(PY) experiments/compare_methods.py

# Every method x from scratch / pretrained backbone x 5 seeds at demo size, stage by stage, with
# the recorded medians beside (a benchmark: about 4 minutes a run on 2 cores; docs/benchmarks.md).
method-effects: $(RUNTIME)
	$(PY) bench/method_effects.py

clean:
	rm -rf $(VENV) runs
