# Two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unseg-installed
# The browser test (tests/test_e2e.py) drives Debian's Chromium: Playwright cannot download its own.
CHROMIUM := /usr/bin/chromium
# pip prints one warning per missing local index folder on these machines; hide only those.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

DATA ?= ../shared/data

.PHONY: install demo test lint bench clean default-generator robust-generator sam-victim

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, torchvision, fiftyone, segment_anything, ultralytics, playwright"
	touch $(STAMP)

install: $(STAMP) $(CHROMIUM)

$(CHROMIUM):
	apt-get update -q && apt-get install -y -q chromium chromium-driver \
		|| echo "Could not install Debian's chromium (root needed): tests/test_e2e.py will fail"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# One pytest worker per core (pytest-xdist), one torch thread each: each worker has its
# own FiftyOne database and data folder (tests/conftest.py).
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -n auto --durations=10

demo: install
	$(PY) examples/demo.py

bench: install
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The generators' training data: the real photographs' training splits, never a test image.
TRAIN_DATA = --data $(DATA)/ecssd/images:$(DATA)/ecssd/masks --data fiftyone:real-camvid@train:ground_truth --data fiftyone:real-pets@train:ground_truth --data fiftyone:real-coco@train:instances

# Retrain the shipped default generator (fiftyone_unseg/weights/default/MODEL_CARD.md) on the
# training splits of the real photographs in $(DATA) (ECSSD, and CamVid's, the pets' and
# COCO's training parts through FiftyOne; never a benchmark test image), in a FiftyOne
# database of its own, in two stages: the tiny recipe with the penalty on one texture
# repeated over images (shared_texture_weight; runs/default-base, the previous default),
# then that generator fine-tuned against a surrogate that keeps learning (adapt_learning).
default-generator: install
	FIFTYONE_DATABASE_NAME=unseg-real-train $(PY) benchmarks/real_data.py --data $(DATA)
	OMP_NUM_THREADS=1 FIFTYONE_DATABASE_NAME=unseg-real-train $(VENV)/bin/unseg train --config tiny --seed 4 --set shared_texture_weight=1.0 $(TRAIN_DATA) --out runs/default-base --overwrite
	OMP_NUM_THREADS=1 FIFTYONE_DATABASE_NAME=unseg-real-train $(VENV)/bin/unseg train --config adapt_learning --init runs/default-base/generator --seed 4 $(TRAIN_DATA) --out runs/default --overwrite
	cp runs/default/generator/model.safetensors runs/default/generator/config.json \
		fiftyone_unseg/weights/default/

# The robust preset's generator (fiftyone_unseg/weights/robust/): the default fine-tuned on
# the same training splits through differentiable JPEG, blur and rescaling against a
# surrogate that keeps learning (trainer/configs/robust.json, which keeps the per-image
# term). Run after default-generator (it starts from its output, runs/default).
robust-generator: install
	FIFTYONE_DATABASE_NAME=unseg-real-train $(PY) benchmarks/real_data.py --data $(DATA)
	OMP_NUM_THREADS=1 FIFTYONE_DATABASE_NAME=unseg-real-train $(VENV)/bin/unseg train --config robust --init runs/default/generator --seed 4 $(TRAIN_DATA) --out runs/robust --overwrite
	mkdir -p fiftyone_unseg/weights/robust
	cp runs/robust/generator/model.safetensors runs/robust/generator/config.json \
		fiftyone_unseg/weights/robust/

# A pretrained interactive victim (no SAM weights can be downloaded here): the tiny SAM
# layout trained with one click per object on clean ECSSD and COCO's training part, never
# the pets; `python benchmarks/real_effectiveness.py --victims sam_point --sam-checkpoint
# runs/victims/sam_point_pretrained.pth` fine-tunes it on the clean and protected pets.
sam-victim: install
	OMP_NUM_THREADS=1 $(PY) benchmarks/pretrained_sam.py --data $(DATA) --epochs 150 \
		--out runs/victims/sam_point_pretrained.pth

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tests/artifacts
