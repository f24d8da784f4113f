#!/usr/bin/env bash
# A load test of the HTTP layer from a second process (wrk, loopback, bounded): the example
# shop, built with the release profile, on SQLite, with 1,000 stored restock executions.
#   GET /health                                       32 connections, 10 s
#   GET /admin/workflows-executions?limit=20          32 connections, 10 s, an admin token
# Prints wrk's summaries; a non-2xx answer or a socket error fails the run.
#   bash tools/bench/http_load.sh      (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -q -p gorgon-example-shop
SHOP=target/release/shop
PORT="${PORT:-9312}"
DURATION="${DURATION:-10s}"
. .ci/shop-server.sh
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
