#!/usr/bin/env bash
# Create the MONAI Label environment (separate from the bundle's .venv):
#   monailabel 0.8.5 + this bundle's requirements, with torch 2.14.1 + torchvision 0.29.1.
# MONAI Label's bundle tasks import torchvision, and PyPI's torchvision does not load beside the CPU
# torch 2.13.0 of .venv, so this environment takes the matching torch/torchvision pair instead
# (a CUDA build; it runs on the CPU too). Usage: tools/monailabel/setup_env.sh [ENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV_DIR="${1:-.venv-monailabel}"
if [ ! -x "$ENV_DIR/bin/python" ]; then
    python3 -m venv "$ENV_DIR"
fi
"$ENV_DIR/bin/python" -m pip install --quiet --upgrade pip
"$ENV_DIR/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
# the bundle's runtime packages; the test-only ones (jsonschema, pytest, onnx, imagecodecs) stay out, as monailabel
# pins an older jsonschema, and pydicom comes at the 2.x that MONAI Label's pydicom-seg imports;
# highdicom (DICOM SR of folder inference) needs pydicom 3 and MLflow tracking is for training runs of
# the bundle's own environment, so both stay out too (the bundle imports them only when used);
# onnxruntime (the optional --backend onnxruntime of folder inference, imported only then) stays out;
# the pylibjpeg decoder plugins need numpy >= 2 and pydicom-seg pins numpy < 2, so they stay out as well:
# MONAI Label's own DICOM loading decodes what its pydicom 2.x can (uncompressed, RLE; JPEG via Pillow)
RUNTIME="$(mktemp)"
trap 'rm -f "$RUNTIME"' EXIT
grep -v -E '^(jsonschema|pytest|onnx|onnxscript|onnxruntime|pydicom|pylibjpeg|imagecodecs|highdicom|mlflow-skinny|sqlalchemy|alembic)\b' requirements.txt > "$RUNTIME"
"$ENV_DIR/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1 monailabel==0.8.5 "pydicom>=2.4,<3" -r "$RUNTIME"
"$ENV_DIR/bin/python" -c "import torch, torchvision, monai, monailabel; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'monai', monai.__version__, 'monailabel', monailabel.__version__)"
