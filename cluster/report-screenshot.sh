#!/usr/bin/env bash
# Renders an HTML report (histodistill report) in headless Chromium and writes a PNG screenshot of its top.
# Usage: cluster/report-screenshot.sh REPORT.html OUT.png [WIDTH] [HEIGHT]   (Debian: apt-get install chromium)
set -euo pipefail
report=$(realpath "$1"); out=$(realpath -m "$2"); width=${3:-1280}; height=${4:-2400}
command -v chromium >/dev/null || { echo "report-screenshot: chromium not found (Debian: apt-get install chromium)" >&2; exit 1; }
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$width,$height" --screenshot="$out" "file://$report" 2>/dev/null
echo "wrote $out"
