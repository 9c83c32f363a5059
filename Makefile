# The test and demo commands install everything themselves into .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: test demo demo-images docs-images install clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(PY) examples/demo.py

# the demo writes its pictures to out/demo-images/ (ignored by git); docs-images regenerates the
# README's three pictures in docs/images/ (tracked), on purpose only
DOCS_IMAGES := mnist_samples_means.png mnist_inpaint_top.png mnist_inpaint_left.png

demo-images: $(VENV)/.installed
	$(PY) examples/demo_images.py

docs-images: demo-images
	cp $(addprefix out/demo-images/,$(DOCS_IMAGES)) docs/images/

clean:
	rm -rf $(VENV) build dist *.egg-info
