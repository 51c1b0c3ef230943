# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv when missing. torch is pinned first: open_clip/timm need torchvision, and this
# torch/torchvision pair is the one that imports here (override TORCH_PIN on other platforms).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_PIN)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/clipkd smoke

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/gd_memory.py
	$(PY) benchmarks/mfd_speed.py
	$(PY) benchmarks/loss_overhead.py
	$(PY) benchmarks/gd_calibration.py
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/zeroshot_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
