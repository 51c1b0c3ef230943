# Two commands for a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv when missing. torch is pinned first: open_clip/timm need torchvision, and this
# torch/torchvision pair is the one that imports here (override TORCH_PIN on other platforms).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: setup fmnist demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,demo,export,docs]' $(TORCH_PIN)
	touch $@

# The demo's images: Fashion-MNIST from Debian's package (or pass --source DIR to `clipkd demo`).
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fmnist:
	@test -f $(FMNIST) || ! command -v apt-get >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && SUDO= || SUDO=sudo; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }

setup: $(VENV)/.installed fmnist

demo: setup
	$(VENV)/bin/clipkd demo --out runs/demo

# The tests marked `kernels` (tests/conftest.py) again under other CPU kernels: AVX2 as on an AMD EPYC (MKL and
# oneDNN capped at AVX2 too) and the generic ones. A figure that leans on one CPU's rounding fails here.
KERNEL_LEGS := "ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2" "ATEN_CPU_CAPABILITY=default"

test: setup
	$(VENV)/bin/lint-imports --no-cache  # the layers of pyproject.toml's [tool.importlinter]: imports point down
	$(PY) -m pytest -q --durations=15
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site  # the manual: docs/ and mkdocs.yml
	@[ "$$(uname -m)" = x86_64 ] || exit 0; \
	for leg in $(KERNEL_LEGS); do echo "== the kernel-dependent tests under $$leg"; \
	  env $$leg $(PY) -c "import os, torch; c = torch.backends.cpu.get_cpu_capability(); \
	    assert c == os.environ['ATEN_CPU_CAPABILITY'].upper(), f'kernels not switched: {c}'" && \
	  env $$leg $(PY) -m pytest -q -m kernels -p no:cacheprovider || exit 1; done

bench: setup
	$(PY) benchmarks/gd_memory.py
	$(PY) benchmarks/mfd_speed.py
	$(PY) benchmarks/loss_overhead.py
	$(PY) benchmarks/gd_calibration.py
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/recipe_cost.py
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/zeroshot_throughput.py
	$(PY) benchmarks/distributed_overhead.py
	$(PY) benchmarks/data_throughput.py --reinforced 4
	$(PY) -m pip install -q pandas  # open_clip_train's CSV reader, for reinforce_speed.py's comparison
	$(PY) benchmarks/reinforce_speed.py
	$(PY) benchmarks/teacher_forward.py
	$(PY) benchmarks/export_latency.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
