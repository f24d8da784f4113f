# Sourced by .ci/http.sh, .ci/browser.sh and tools/bench/http_load.sh: serves the example
# shop from $SHOP on $PORT in a fresh folder (SQLite), with an admin user
# (admin@example.com / supersecret) and the seed's data. Sets DIR, SERVER, BASE, TOKEN and
# SUPPLIER; the server stops and the folder goes when the calling script exits.
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
export RUST_LOG="${RUST_LOG:-warn}"
"$SHOP" --root "$DIR" db migrate >/dev/null
"$SHOP" --root "$DIR" user create -e admin@example.com -p supersecret >/dev/null
"$SHOP" --root "$DIR" exec seed >/dev/null
"$SHOP" --root "$DIR" start > "$DIR/server.log" 2>&1 &
SERVER=$!
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do curl -fsS "$BASE/health" >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$(curl -fsS -X POST "$BASE/auth/user/emailpass" -H 'content-type: application/json' \
  -d '{"email":"admin@example.com","password":"supersecret"}' | jq -r .token)
SUPPLIER=$(curl -fsS "$BASE/admin/suppliers?fields=id&limit=1" -H "authorization: Bearer $TOKEN" \
  | jq -r '.suppliers[0].id')
