#!/usr/bin/env bash
# The prepared GPU run of the learned-feature service (issue 14): map builds with ALIKED + LightGlue
# and SIFT, `vloc bench 7scenes --features aliked --device cuda`, and `vloc bench serve --device cuda
# --robots 128 --hz 5`, JSON under one folder.
#
# The GPU machine has no network and Python 3.12 with a CUDA torch, torchvision, OpenCV, numpy, h5py,
# httpx, rich and typer; it lacks pycolmap, kornia, fastapi, pydantic, uvicorn. At most 64 MiB travel
# per call, so the work is three steps:
#
#   bench/gpu.sh stage            here (CPU): cp312 wheels into .whl/, the shared redkitchen frames and
#                                 the weights (LightGlue in fp16: half the bytes) into .device/; both
#                                 folders are git-ignored (.git/info/exclude) and removed after the run
#   bench/gpu.sh install          there, call 1 (carry .whl .device/frames): wheels -> /tmp/site,
#                                 frames -> /tmp/redkitchen
#   bench/gpu.sh run OUT          there, call 2 (carry .device/weights), while the machine is warm;
#                                 STEPS="maps 7scenes serve lightglue cv" (default all) picks steps;
#                                 the results come back as OUT/results.tgz
#
# DEVICE=cpu SMOKE=1 bench/gpu.sh run OUT runs the same steps small on a CPU machine (a check of the
# script, not a measurement).
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:?usage: bench/gpu.sh stage|install|run OUT}
SITE=${VLOC_GPU_SITE:-/tmp/site}
FRAMES=${VLOC_GPU_FRAMES:-/tmp/redkitchen}
WEIGHTS=${VLOC_GPU_WEIGHTS:-/tmp/weights}

wheels=(pycolmap==4.2.1 kornia==0.9.0 kornia_rs==0.2.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4
        pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 uvicorn==0.55.0
        python-multipart==0.0.34 websockets==17.4 annotated-types==0.8.0 typing-inspection==0.4.5
        annotated-doc==0.0.7)

case "$step" in
stage)
  PY=${PY:-.venv/bin/python}
  mkdir -p .whl .device/frames/seq-01 .device/weights
  for w in "${wheels[@]}"; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 --platform any -d .whl "$w" || exit 2
  done
  src=${VLOC_SHARED_DATASETS:-../shared/datasets}/7scenes-redkitchen
  cp "$src"/pgt_*_seq01.txt .device/frames/ && cp "$src"/seq-01/*.color.jpg .device/frames/seq-01/ || exit 2
  $PY - <<'EOF' || exit 2
import torch
from vision.learned import weights_path
for name in ("aliked-n16", "aliked_lightglue"):
    state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() and name.endswith("lightglue") else v for k, v in state.items()}
    torch.save(half, f".device/weights/{weights_path(name).name}")
EOF
  du -sh .whl .device/frames .device/weights
  ;;
install)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || exit 2
  rm -rf "$FRAMES" && cp -r .device/frames "$FRAMES" && ls "$FRAMES/seq-01" | wc -l
  PYTHONPATH="$SITE:$PWD" python3 -c "import torch, pycolmap, kornia, fastapi; print('installed: torch', \
torch.__version__, 'cuda', torch.cuda.is_available(), 'pycolmap', pycolmap.__version__, 'kornia', kornia.__version__)"
  ;;
run)
  FINAL=${2:?usage: bench/gpu.sh run OUT}
  OUT="$FINAL/r"  # everything lands here and travels back as one archive (the device returns <= 8 files)
  mkdir -p "$OUT"
  STEPS=${STEPS:-maps 7scenes serve lightglue cv}
  want() { [[ " $STEPS " == *" $1 "* ]]; }
  [ -d .device/weights ] && { rm -rf "$WEIGHTS"; cp -r .device/weights "$WEIGHTS"; }
  export PYTHONPATH="$SITE:$PWD" VLOC_WEIGHTS_DIR="$WEIGHTS" PYTHONUNBUFFERED=1 NO_PROXY='*'
  DEVICE=${DEVICE:-cuda}
  SECONDS_LOAD=${SERVE_SECONDS:-20}
  ROBOTS=${ROBOTS:-128}
  PY="${PYBIN:-python3} -m vloc.cli"
  [ -n "${SMOKE:-}" ] && { SECONDS_LOAD=3; ROBOTS=4; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  t0=$(date +%s)
  log() { echo "[gpu.sh $(( $(date +%s) - t0 )) s] $*"; }
  # 1. map build, 100 redkitchen images (n % 3 == 0), pgt_sfm poses: ALIKED + LightGlue, then SIFT
  every=3; [ -n "${SMOKE:-}" ] && every=30
  awk -v every=$every '/^#/ || NF == 0 {next} match($1, /frame-[0-9]+/) {
      n = substr($1, RSTART + 6, RLENGTH - 6) + 0; if (n % every == 0) print }' \
    "$FRAMES/pgt_sfm_seq01.txt" > /tmp/pgt100.txt
  log "map images: $(wc -l < /tmp/pgt100.txt)"
  want maps || every=0
  for f in aliked aliked sift; do  # ALIKED twice: the first pays CUDA / cuDNN start-up
    [ "$every" = 0 ] && break
    log "map build $f"
    timeout 300 $PY map build --images "$FRAMES" --poses /tmp/pgt100.txt --poses-format pgt --features $f \
      --device "$DEVICE" --out "/tmp/map100_$f" --json -q >> "$OUT/map_build_100.jsonl" \
      || echo "{\"features\": \"$f\", \"failed\": true}" >> "$OUT/map_build_100.jsonl"
  done
  # 2. localization: revisit / dense x pgt_sfm / pgt_dslam + degradations, ALIKED (NN 2D-3D, LightGlue)
  for m in nn; do
    want 7scenes || break
    log "bench 7scenes aliked $m"
    timeout 420 $PY bench 7scenes --root "$FRAMES" --features aliked --device "$DEVICE" --matcher $m --repeats 3 \
      --maps-dir /tmp/maps7 --json "$OUT/7scenes_aliked_$m.json" > "$OUT/7scenes_aliked_$m.md" 2>&1
  done
  # 3. the service: 128 robots x 5 Hz over loopback, ALIKED maps, micro-batches, NN 2D-3D
  for mode in "" "--stream"; do
    want serve || break
    log "bench serve $mode"
    timeout 300 $PY bench serve --root "$FRAMES" --features aliked --device "$DEVICE" --matcher nn \
      --robots "$ROBOTS" --hz 5 --seconds "$SECONDS_LOAD" --workers 4 --workdir /tmp/serve-cache $mode \
      --json "$OUT/serve_aliked${mode/--/_}.json" > "$OUT/serve_aliked${mode/--/_}.md" 2>&1
  done
  # 4. the same with LightGlue at query time (the accuracy option)
  for m in lightglue; do
    want lightglue || break
    [ -n "${SMOKE:-}" ] && [ $m = lightglue ] && continue
    log "bench 7scenes aliked $m"
    timeout 420 $PY bench 7scenes --root "$FRAMES" --features aliked --device "$DEVICE" --matcher $m --repeats 3 \
      --maps-dir /tmp/maps7 --json "$OUT/7scenes_aliked_$m.json" > "$OUT/7scenes_aliked_$m.md" 2>&1
  done
  # 5. cross-validated folds (issue 17): ALIKED maps per fold, NN and LightGlue at query time
  for m in nn lightglue; do
    want cv || break
    [ -n "${SMOKE:-}" ] && [ $m = lightglue ] && continue
    log "bench 7scenes cv aliked $m"
    timeout 420 $PY bench 7scenes --root "$FRAMES" --protocol cv --degradations '' --features aliked \
      --device "$DEVICE" --matcher $m --repeats 3 --maps-dir /tmp/maps7cv \
      --json "$OUT/7scenes_cv_aliked_$m.json" > "$OUT/7scenes_cv_aliked_$m.md" 2>&1
  done
  log "done"
  tar czf "$FINAL/results.tgz" -C "$OUT" . && rm -rf "$OUT"
  ;;
*)
  echo "usage: bench/gpu.sh stage|install|run OUT" >&2; exit 2 ;;
esac
