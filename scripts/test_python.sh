#!/usr/bin/env bash
# The Python package's tests: build and install it (`pip install .`, maturin + PyO3) into a fresh
# virtual environment, then run tests/python with pytest inside it. Needs python3 with venv and
# network access to PyPI (maturin, numpy, pytest, onnx, onnxruntime).
set -euo pipefail
cd "$(dirname "$0")/.."
V=target/py-venv
rm -rf "$V"
python3 -m venv "$V"
"$V/bin/pip" install --quiet --disable-pip-version-check . pytest onnx onnxruntime
"$V/bin/python" -m pytest -q tests/python
