#!/usr/bin/env bash
# Build the pycode report with `qbscale report` and screenshot it in headless
# Chromium, to look at the page as a browser draws it.
#
#   benchmarks/render_report.sh [OUT_DIR]      (default: $TMPDIR/qbscale-report)
#
# Writes OUT_DIR/pycode.zarr (an embeddings store of the shipped pycode data,
# with the test gallery as its gallery bank for dual-is), OUT_DIR/report/
# (index.html and its PNGs) and OUT_DIR/screenshot.png.  Chromium comes from
# `apt-get install -y chromium` (or chromium-browser / google-chrome).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-${TMPDIR:-/tmp}/qbscale-report}
PYTHON=${PYTHON:-python}
DATA=$ROOT/examples/data/pycode
BROWSER=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$BROWSER" ]; then
    echo "no Chromium found: apt-get install -y chromium" >&2
    exit 1
fi
mkdir -p "$OUT"
export QBSCALE_NO_REEXEC=1

"$PYTHON" -m qbscale.cli ingest --bank-emb "$DATA/querybank.npy" \
    --test-emb "$DATA/queries_test.npy" --gallery-emb "$DATA/gallery_test.npy" \
    -o "$OUT/pycode.zarr" --overwrite --quiet
"$PYTHON" -c "import sys; from qbscale.storage.stores.gallery_bank import add_gallery_bank; \
add_gallery_bank(sys.argv[1], sys.argv[2], overwrite=True, progress=False)" \
    "$OUT/pycode.zarr" "$DATA/gallery_test.npy"
"$PYTHON" -m qbscale.cli report "$OUT/pycode.zarr" -o "$OUT/report" --overwrite \
    --items "$DATA/items_test.jsonl.gz" --title "pycode: docstring -> code" --quiet

PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
"$BROWSER" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$PROFILE" \
    --screenshot="$OUT/screenshot.png" --window-size=1200,2400 \
    "file://$OUT/report/index.html" 2>/dev/null
echo "report: $OUT/report/index.html"
echo "screenshot: $OUT/screenshot.png"
