# pyfs developer entry points. `make mount` to try it, `make test` to prove it.
# Works as root (CI) or as a user with sudo; never asks questions.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.stamp
PYTEST_ARGS ?= -q -x
IMAGE       ?= pyfs.img
IMAGE_SIZE  ?= 1G
MOUNTPOINT  ?= mnt
# `make crashloop`: kill-and-remount rounds with power-loss images (tools/crashloop.py, docs/crashloop.md).
ROUNDS      ?= 100
SEED        ?= 1
IMAGES      ?= 10
CRASHLOOP_ARGS ?=

# fuse3 gives fusermount3 (mounting as a user); pyfuse3 compiles against
# libfuse3-dev, found through pkg-config.
APT_PACKAGES := fuse3 libfuse3-dev pkg-config

.PHONY: setup test crashloop mount umount clean

setup: $(STAMP)

# System packages first (pyfuse3 will not build without them), then the venv.
# On a bare Debian the system Python also lacks venv/ensurepip, its headers
# and a C compiler; those are added only when actually missing.
$(STAMP): pyproject.toml
	@missing=""; \
	if command -v dpkg >/dev/null; then \
	  for p in $(APT_PACKAGES); do \
	    dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	  done; \
	  $(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	  $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	    || missing="$$missing python3-dev"; \
	  command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	else \
	  echo "setup: no dpkg here; make sure libfuse3 headers, pkg-config and fusermount3 are installed" >&2; \
	fi; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  echo "setup: installing system packages:$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# A long crash loop: ROUNDS kills of a real mount, IMAGES power-loss images per round.
crashloop: $(STAMP)
	$(PY) tools/crashloop.py --rounds $(ROUNDS) --seed $(SEED) --power-cut --images $(IMAGES) $(CRASHLOOP_ARGS)

mount: $(STAMP)
	@if mountpoint -q $(MOUNTPOINT) 2>/dev/null; then \
	  echo "$(MOUNTPOINT)/ is already mounted; 'make umount' first"; exit 0; \
	fi; \
	if [ ! -e $(IMAGE) ]; then \
	  echo "creating $(IMAGE) ($(IMAGE_SIZE))"; \
	  $(PY) mkfs.py $(IMAGE) --size $(IMAGE_SIZE); \
	fi; \
	mkdir -p $(MOUNTPOINT); \
	$(PY) -m pyfs mount $(IMAGE) $(MOUNTPOINT); \
	echo; \
	echo "pyfs: $(IMAGE) is mounted on $(MOUNTPOINT)/"; \
	echo "  use it like any directory:  ls $(MOUNTPOINT); cp -r somedir $(MOUNTPOINT)/"; \
	echo "  unmount with:               make umount"

umount:
	@if [ -x $(PY) ] && $(PY) -m pyfs umount $(MOUNTPOINT); then :; \
	else echo "falling back to fusermount3"; fusermount3 -u $(MOUNTPOINT); fi

# Leaves $(IMAGE) alone: it is user data. Never descends into the mount point.
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
	find . \( -path ./$(MOUNTPOINT) -o -path ./.git \) -prune -o \
	  -type d -name __pycache__ -prune -exec rm -rf {} +
