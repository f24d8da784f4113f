#!/usr/bin/env bash
# The example shop served by a real process, then:
#  1. the README's curl examples (every route family), each call checked;
#  2. schemathesis (from PyPI) against its /openapi.json: no 5xx, every response valid against
#     the schema. The live-event routes never end by design and are left out.
# Needs target/debug/shop (cargo test builds it).
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
"$SHOP" --root "$DIR" user create -e admin@example.com -p supersecret >/dev/null
"$SHOP" --root "$DIR" exec seed >/dev/null
"$SHOP" --root "$DIR" start > "$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PORT/auth/user/emailpass" \
  -H 'content-type: application/json' \
  -d '{"email":"admin@example.com","password":"supersecret"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# 1. The README's examples, against this server.
sed -n '/<!-- curl-examples:start -->/,/<!-- curl-examples:end -->/p' README.md \
  | sed '1,2d;$d' | sed '$d' \
  | sed "s|^BASE=http://localhost:9000|BASE=http://127.0.0.1:$PORT|" > "$DIR/examples.sh"
if ! bash -euo pipefail "$DIR/examples.sh" > "$DIR/examples.log" 2>&1; then
  echo "the README's curl examples failed:"; cat "$DIR/examples.log"; tail -n 30 "$DIR/server.log"; exit 1
fi
echo "README curl examples: $(grep -c '^curl\|^[A-Z]*=\$(curl' "$DIR/examples.sh") calls passed"

# 2. Schemathesis.
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
