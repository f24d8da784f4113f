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
. "$(dirname "$0")/shop-server.sh"

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
