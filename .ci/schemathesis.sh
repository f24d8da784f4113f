#!/usr/bin/env bash
# Schemathesis (from PyPI) against the example shop's /openapi.json, served by a real process:
# no 5xx, and every response valid against the schema. Needs target/debug/shop (cargo test
# builds it). The live-event routes never end by design and are left out.
set -euo pipefail
cd "$(dirname "$0")/.."

SHOP="${SHOP:-target/debug/shop}"
PORT="${PORT:-9311}"
DIR="$(mktemp -d)"
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

cat > "$DIR/gorgon.toml" <<TOML
[project]
database_url = "sqlite://$DIR/shop.db"
[project.http]
port = $PORT
TOML
export RUST_LOG=warn
"$SHOP" --root "$DIR" db migrate >/dev/null
"$SHOP" --root "$DIR" user create -e admin@schemathesis.test -p supersecret >/dev/null
"$SHOP" --root "$DIR" exec seed >/dev/null
"$SHOP" --root "$DIR" start > "$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PORT/auth/user/emailpass" \
  -H 'content-type: application/json' \
  -d '{"email":"admin@schemathesis.test","password":"supersecret"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

status=0
schemathesis run "http://127.0.0.1:$PORT/openapi.json" \
  -H "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,response_schema_conformance \
  --exclude-path-regex 'subscribe$' \
  --max-examples "${MAX_EXAMPLES:-25}" \
  --request-timeout 10 \
  --workers 2 \
  --seed 42 \
  --suppress-health-check all \
  || status=$?
if [ "$status" != 0 ]; then
  echo "schemathesis failed; the server's log:"
  tail -n 50 "$DIR/server.log"
fi
exit "$status"
