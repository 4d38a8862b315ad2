#!/usr/bin/env bash
# Create HierVL's Python environment once and install the pinned dependencies into it.
#
#   bash tools/setup_env.sh            # .venv/ in the repo (or $HIERVL_VENV)
#   HIERVL_PYTHON=$(which python) bash tools/setup_env.sh   # an environment you manage
#   HIERVL_DETECTRON2_SOURCE='git+https://github.com/facebookresearch/detectron2.git' \
#       bash tools/setup_env.sh        # build upstream detectron2 instead of the PyPI wheel
#
# Installs requirements.txt and the "export" extra (requirements-export.txt: onnx, onnxruntime,
# onnxscript for tools/export_model.py). A second run with the same requirements does nothing.
# An installed detectron2 is kept.
# Prints the environment's python on its last line.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -n "${HIERVL_PYTHON:-}" ]; then
  py=$HIERVL_PYTHON
else
  venv=${HIERVL_VENV:-$repo/.venv}
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup_env] creating $venv" >&2
    python3 -m venv "$venv"
  fi
  py=$venv/bin/python
fi

prefix=$("$py" -c 'import sys; print(sys.prefix)')
stamp=$prefix/.hiervl-env-stamp
want=$(cat "$repo/requirements.txt" "$repo/requirements-export.txt" "$repo/pyproject.toml" \
  "$repo/tools/setup_env.sh" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$py"
  exit 0
fi

echo "[setup_env] installing requirements.txt and requirements-export.txt into $prefix" \
  "(first run: a few minutes)" >&2
# One resolver run for both files, so the extra cannot move a pin of requirements.txt.
"$py" -m pip install -q --disable-pip-version-check -r "$repo/requirements.txt" \
  -r "$repo/requirements-export.txt" >&2

if "$py" -c 'import detectron2' 2>/dev/null; then
  echo "[setup_env] keeping the installed detectron2" >&2
elif [ -n "${HIERVL_DETECTRON2_SOURCE:-}" ]; then
  echo "[setup_env] building detectron2 from $HIERVL_DETECTRON2_SOURCE" >&2
  "$py" -m pip install -q --no-build-isolation "$HIERVL_DETECTRON2_SOURCE" >&2
else
  # PyPI has no detectron2 under its own name; sal-detectron2 is upstream's pure-Python package
  # (mid-2024) in a wheel tagged cp310. Its optional _C binary is never loaded for semantic
  # segmentation, so it is installed for this Python with --target and its deps come from
  # requirements.txt.
  purelib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "[setup_env] installing detectron2 (PyPI sal-detectron2==0.7.2) into $purelib" >&2
  tmp=$(mktemp -d)
  "$py" -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.10 --target "$tmp" sal-detectron2==0.7.2 >&2
  rm -f "$tmp"/detectron2/_C*.so
  cp -r "$tmp"/detectron2 "$tmp"/sal_detectron2-*.dist-info "$purelib"/
  rm -rf "$tmp"
fi

"$py" -m pip install -q --disable-pip-version-check --no-deps -e "$repo" >&2
"$py" -c 'import detectron2, open_clip, hiervl, onnx, onnxruntime, onnxscript' >&2
echo "$want" > "$stamp"
echo "[setup_env] ready: $py" >&2
echo "$py"
