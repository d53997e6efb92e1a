#!/usr/bin/env bash
# The device check on a GPU machine (docs/gpu.md, "The device check"): install the carried wheels into a
# scratch folder (the image's own packages stay as they are), then run the driver (device_check/, as
# `python -m device_check`), which writes OUT/device_check.json and OUT/device_check.md; the log and
# nvidia-smi's view go to OUT too.
#
#   make device-wheels                         # here, once: fills .device-carry (wheels + tokenizer)
#   scripts/device_check.sh OUT [options]      # there, with .device-carry carried; options go to the driver
#
# PYTHON picks the interpreter (default python3: on the check machines, the one that holds torch).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/device_check.sh OUT_DIR [python -m device_check options]}
shift
py=${PYTHON:-python3}
carry=.device-carry
site=${DEVICE_SITE:-/tmp/device-check-site}
if ! ls $carry/wheels/*.whl >/dev/null 2>&1 || [ ! -f $carry/tokenizer/tokenizer.json ]; then
  echo "$carry is missing or incomplete: run 'make device-wheels' and carry $carry" >&2
  exit 2
fi
mkdir -p "$out"
started=$(date +%s)
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  $carry/wheels/*.whl || exit 2
echo "wheels installed into $site in $(( $(date +%s) - started )) s"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
"$py" -m device_check "$out" --tokenizer $carry/tokenizer "$@" 2>&1 | tee "$out/device_check.log"
status=${PIPESTATUS[0]}
echo "device check: exit $status after $(( $(date +%s) - started )) s; results in $out"
exit "$status"
