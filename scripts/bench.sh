#!/usr/bin/env bash
# Pass benchmark as reported in the README: load + prune + save vs copying the file, peak RSS.
# Sizes: the largest real model available, a ~90 MB and a ~1.6 GB synthetic transformer-like
# model with external data (generated into target/bench-models, not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --benches -q
B=$(ls -t target/release/deps/pass-* | grep -v '\.d$' | head -1)
echo "### largest real model"
"$B"
for mb in 90 1600; do
  f=target/bench-models/synthetic_${mb}mb.onnx
  [ -f "$f" ] || "$B" --generate "$mb" target/bench-models
  echo "### synthetic ${mb} MB"
  "$B" "$f"
done
