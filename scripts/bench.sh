#!/usr/bin/env bash
# Pass benchmark as reported in the README: load + prune + save vs copying the file (and vs reading
# all its bytes and writing them back), peak RSS; scopes global (the paper's protocol; the CLI default is now normalized) and unit.
# Sizes: the largest real model available, a ~90 MB and a ~1.6 GB synthetic transformer-like
# model with external data (generated into target/bench-models, not committed).
# Then structured mode on mobilenet_v2: tract latency dense → pruned, through the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --benches --bins -q
B=$(ls -t target/release/deps/pass-* | grep -v '\.d$' | head -1)
for mb in 90 1600; do
  f=target/bench-models/synthetic_${mb}mb.onnx
  [ -f "$f" ] || "$B" --generate "$mb" target/bench-models
done
# The floors side by side (issue 13): cat (read+write through user memory), cp and the CLI pass
# (--no-verify) per scope, each command's runs in a row (--grouped), median wall and peak RSS against the targets
# (scripts/floors.py); then the Python peer (onnx + numpy: scripts/peer.py) and, at 90 MB,
# --structured channels, once each.
T0=$(mktemp -d)
for mb in 90 1600; do
  f=target/bench-models/synthetic_${mb}mb.onnx
  echo "### floors, synthetic ${mb} MB"
  runs=9; [ "$mb" = 1600 ] && runs=3
  python3 scripts/floors.py "$f" --runs $runs --grouped --scopes normalized,global,layer,unit
  if python3 -c "import onnx, numpy" 2>/dev/null; then
    sync; /usr/bin/time -f "python peer  %e s  %M KB" python3 scripts/peer.py "$f" "$T0/peer.onnx" >/dev/null
  fi
  if [ "$mb" = 90 ]; then
    /usr/bin/time -f "onnx-emp --structured channels --no-verify %e s  %M KB" target/release/onnx-emp "$f" "$T0/out.onnx" --no-verify --quiet --structured channels --force
  fi
  rm -f "$T0"/*
done
rm -rf "$T0"
for scope in global unit; do
  echo "### largest real model, scope $scope"
  "$B" --scope "$scope"
  for mb in 90 1600; do
    echo "### synthetic ${mb} MB, scope $scope"
    "$B" target/bench-models/synthetic_${mb}mb.onnx --scope "$scope"
  done
done
MB=../shared/models/mobilenet_v2_random_ts.onnx
if [ -f "$MB" ]; then
  echo "### structured channels, mobilenet_v2 (tract latency, CLI)"
  T=$(mktemp -d)
  target/release/onnx-emp "$MB" "$T/out.onnx" --structured channels --report "$T/r.json" --quiet
  python3 - "$T/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, p = r["timing"], r["params"]
print(f"params       {p['before']} → {p['after']}")
print(f"verification {r['verification']['status']}, equivalence {[e['status'] for e in r['equivalence']]}")
print(f"latency      {t['latency_dense']['median_ms']:.3f} ms → {t['latency_pruned']['median_ms']:.3f} ms (median, tract)")
print(f"stages       load {t['load_ms']:.1f} ms, prune {t['prune_ms']:.1f} ms, save {t['save_ms']:.1f} ms, verify {t['verify_ms']:.1f} ms")
PY
  rm -rf "$T"
fi

# Big CNNs, default commands (issue 13): wall time and peak RSS of the default structured run
# (with verification: masked proof, fidelity, latency within its budget) and without verification
# (no tract: the structured pass alone). Floors: DenseNet-161 ≤ 60 s, ResNet-50 ≈ 10 s; the pass's
# peak RSS ≤ 1.2× the model's bytes.
if python3 -c "import torch, torchvision" 2>/dev/null; then
  python3 scripts/make_bench_cnn.py target/bench-models >/dev/null
  T=$(mktemp -d)
  for m in densenet161 resnet50; do
    f=target/bench-models/$m.onnx
    echo "### $m ($(du -m "$f" | cut -f1) MB), --structured channels --beta 0.8"
    /usr/bin/time -f "default run     %e s  %M KB peak" target/release/onnx-emp "$f" "$T/o.onnx" \
      --structured channels --beta 0.8 --quiet --force
    /usr/bin/time -f "--no-verify     %e s  %M KB peak" -o "$T/t" target/release/onnx-emp "$f" "$T/o.onnx" \
      --structured channels --beta 0.8 --quiet --force --no-verify
    cat "$T/t"
    echo "                floor $(( $(stat -c %s "$f") * 12 / 10 / 1024 )) KB peak (1.2× the model's bytes)"
  done
  # The structured pass on a transformer, both modes.
  f=target/bench-models/bench_transformer_100mb.onnx
  [ -f "$f" ] || ! python3 -c "import onnxscript" 2>/dev/null || python3 scripts/make_bench_transformer.py target/bench-models
  if [ -f "$f" ]; then
    echo "### encoder ($(du -m "$f" | cut -f1) MB)"
    for mode in channels heads; do
      /usr/bin/time -f "encoder --structured $mode --beta 0.8 --no-verify  %e s  %M KB peak" -o "$T/t" \
        target/release/onnx-emp "$f" "$T/o.onnx" --structured $mode --beta 0.8 --quiet --force --no-verify
      cat "$T/t"
    done
    echo "                floor $(( $(stat -c %s "$f") * 12 / 10 / 1024 )) KB peak (1.2× the model's bytes)"
  fi
  rm -rf "$T"
else
  echo "### big-CNN benchmark skipped: needs python3 with torch and torchvision"
fi

# Reconstruction of a ~100 MB model with 256 calibration samples (issue 10: floor 60 s on 2 cores).
if python3 -c "import torch, onnxscript" 2>/dev/null; then
  BT=target/bench-models/bench_transformer_100mb.onnx
  [ -f "$BT" ] || python3 scripts/make_bench_transformer.py target/bench-models
  T=$(mktemp -d)
  for mode in "" "--structured channels --beta 0.8"; do
    echo "### reconstruction, 100 MB transformer, 256 samples ${mode:-(per-weight)}"
    # shellcheck disable=SC2086
    target/release/onnx-emp "$BT" "$T/out.onnx" $mode --calibration target/bench-models/bench_transformer_calib_x.npy \
      --no-verify --quiet --report "$T/r.json"
    python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timing']; print(f\"reconstruct  {t['reconstruct_ms']/1e3:.1f} s   (floor 60 s)\")" "$T/r.json"
  done
  rm -rf "$T"
else
  echo "### reconstruction benchmark skipped: needs python3 with torch and onnxscript"
fi
