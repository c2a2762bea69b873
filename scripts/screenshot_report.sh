#!/usr/bin/env bash
# Render a run's report.html in headless Chromium and save a screenshot (PNG).
#
#   scripts/screenshot_report.sh RUN_DIR [OUT.png] [WIDTH,HEIGHT]
#
# Needs chromium (Debian: apt-get install -y chromium). Nothing is fetched: the report embeds its plots, and
# networking, updates and sync are switched off. Default output: RUN_DIR/report_files/screenshot.png.
set -euo pipefail

run_dir=${1:?usage: screenshot_report.sh RUN_DIR [OUT.png] [WIDTH,HEIGHT]}
out=${2:-$run_dir/report_files/screenshot.png}
size=${3:-1280,7000}
report=$(realpath "$run_dir/report.html")
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
  echo "no chromium found: install it (Debian: apt-get install -y chromium)" >&2
  exit 3
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --disable-dev-shm-usage --hide-scrollbars \
  --user-data-dir="$profile" --window-size="$size" --screenshot="$(realpath -m "$out")" "file://$report" \
  >/dev/null 2>&1
test -s "$out"
echo "$out"
