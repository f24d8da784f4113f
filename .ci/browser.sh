#!/usr/bin/env bash
# The dashboard in headless Chromium (Debian's package), driven by puppeteer-core from npm,
# against the example shop served by a real process. Needs target/debug/shop (cargo test
# builds it). SHOTS=docs keeps the screenshots.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  apt-get install -y -q chromium >/dev/null
fi
TESTS=crates/admin-ui/tests/browser
[ -d "$TESTS/node_modules/puppeteer-core" ] || npm ci --prefix "$TESTS" --no-audit --no-fund >/dev/null

SHOP="${SHOP:-target/debug/shop}"
PORT="${PORT:-9313}"
. "$(dirname "$0")/shop-server.sh"
if ! BASE="$BASE" SUPPLIER="$SUPPLIER" SHOTS="${SHOTS:-}" node "$TESTS/dashboard.mjs"; then
  echo "the browser test failed; the server's log:"; tail -n 40 "$DIR/server.log"; exit 1
fi
