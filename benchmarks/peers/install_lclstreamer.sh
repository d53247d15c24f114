#!/usr/bin/env bash
# Install one lclstreamer checkout into its own venv (no pixi/conda): psana 4.3.4 from PyPI + MPICH wheel.
#
#   benchmarks/peers/install_lclstreamer.sh SRC_DIR VENV_DIR [STREAMPY]
#
# SRC_DIR: a clone of slac-lcls/lclstreamer or lclstream/lclstreamer. STREAMPY: what to pip-install for the
# `stream` dependency (default: git+https://github.com/frobnitzem/stream.py, as lclstreamer's pyproject pins;
# pass a local clone where GitHub is not reachable by pip). Needs: python3 (3.11-3.13) with venv, and for
# pykerberos (a psana dependency) a C compiler and libkrb5-dev where no wheel fits.
# lclstreamer itself is installed --no-deps because its pyproject lists the git URL and doc/test tools
# (sphinx*, mypy, pytest, h5py-stubs, types-PyYAML) among runtime deps; the runtime ones are installed here,
# plus h5py, hdf5plugin and mpi4py, which its pixi manifest gets from conda-forge.
set -euxo pipefail
SRC=$1 VENV=$2 STREAMPY=${3:-git+https://github.com/frobnitzem/stream.py}
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip setuptools wheel
"$VENV/bin/pip" install -q "psana==4.3.4" mpich "mpi4py>=4" h5py hdf5plugin
"$VENV/bin/pip" install -q "$STREAMPY"
"$VENV/bin/pip" install -q typer numpy pydantic aiostream pyyaml pyzmq pynng cbor bitshuffle
"$VENV/bin/pip" install -q --no-deps -e "$SRC"
"$VENV/bin/python" -c "import lclstreamer, psana, mpi4py.MPI, stream, h5py, hdf5plugin; print('lclstreamer ok')"
