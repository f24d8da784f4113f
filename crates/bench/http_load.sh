#!/usr/bin/env bash
# A load test of the HTTP layer from a second process (wrk, loopback, bounded): the example
# shop, built with the release profile, on SQLite, with 1,000 stored restock executions.
#   GET /health                                       32 connections, 10 s
#   GET /admin/workflows-executions?limit=20          32 connections, 10 s, an admin token
# Prints wrk's summaries; a non-2xx answer or a socket error fails the run.
#   bash crates/bench/http_load.sh      (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -q -p gorgon-example-shop
SHOP=target/release/shop
PORT="${PORT:-9312}"
DURATION="${DURATION:-10s}"
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
"$SHOP" --root "$DIR" user create -e admin@load.test -p supersecret >/dev/null
"$SHOP" --root "$DIR" exec seed >/dev/null
"$SHOP" --root "$DIR" start > "$DIR/server.log" 2>&1 &
SERVER=$!
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do curl -fsS "$BASE/health" >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$(curl -fsS -X POST "$BASE/auth/user/emailpass" -H 'content-type: application/json' \
  -d '{"email":"admin@load.test","password":"supersecret"}' | jq -r .token)
SUPPLIER=$(curl -fsS "$BASE/admin/suppliers?fields=id&limit=1" -H "authorization: Bearer $TOKEN" | jq -r '.suppliers[0].id')
BODY="{\"supplier_id\":\"$SUPPLIER\",\"items\":[{\"product_id\":\"prod_1\",\"quantity\":1,\"unit_cost\":1}]}"
seq 1 1000 | xargs -P 4 -I{} curl -fsS -o /dev/null -X POST "$BASE/admin/restock-orders" \
  -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$BODY"
COUNT=$(curl -fsS "$BASE/admin/workflows-executions?limit=1&fields=id" -H "authorization: Bearer $TOKEN" | jq .count)
echo "stored executions: $COUNT"

check() {
  local out="$1"
  echo "$out"
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
    echo "load test: errors above"; exit 1
  fi
}
echo "== GET /health, 32 connections, $DURATION"
check "$(wrk -t2 -c32 -d"$DURATION" --latency "$BASE/health")"
echo "== GET /admin/workflows-executions?limit=20, 32 connections, $DURATION"
for i in 1 2 3; do curl -fsS -o /dev/null -w "one request alone: %{time_total}s\n" -H "authorization: Bearer $TOKEN" "$BASE/admin/workflows-executions?limit=20"; done
curl -fsS -o /dev/null -w "fields=id,workflow_id,state alone: %{time_total}s\n" -H "authorization: Bearer $TOKEN" "$BASE/admin/workflows-executions?limit=20&fields=id,workflow_id,state"
check "$(wrk -t2 -c32 -d"$DURATION" --latency -H "authorization: Bearer $TOKEN" \
  "$BASE/admin/workflows-executions?limit=20")"
