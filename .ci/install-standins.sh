#!/usr/bin/env bash
# Installs the local stand-ins the provider tests start themselves (from PyPI):
#   - moto in server mode, an S3-compatible server  (gorgon-file-s3 tests: python3 -m moto.server)
#   - aiosmtpd, an SMTP server                      (gorgon-notification-smtp tests: python3 -m aiosmtpd)
#   - schemathesis, an OpenAPI fuzzer               (.ci/schemathesis.sh)
# Idempotent: a package that is already importable is skipped. Safe to run on every CI run.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-standins: $PYTHON not found; the S3 and SMTP provider tests need Python 3" >&2
    exit 1
fi

install_unless_importable() {
    local check="$1"
    shift
    if "$PYTHON" -c "$check" >/dev/null 2>&1; then
        echo "install-standins: $* already installed"
    else
        echo "install-standins: installing $*"
        "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"
    fi
}

# moto's server mode needs its [server] extra (flask, flask-cors, ...).
install_unless_importable "import moto, moto.server, flask, flask_cors" 'moto[server]'
install_unless_importable "import aiosmtpd.handlers" aiosmtpd
# schemathesis fuzzes the HTTP API from its OpenAPI document (.ci/schemathesis.sh).
install_unless_importable "import schemathesis" 'schemathesis==4.32.5'

# Fail loudly now rather than in the middle of cargo test.
"$PYTHON" -c "import moto.server, aiosmtpd.handlers" \
    || { echo "install-standins: stand-ins still not importable" >&2; exit 1; }
echo "install-standins: moto $("$PYTHON" -c 'import moto; print(moto.__version__)'), aiosmtpd $("$PYTHON" -c 'import aiosmtpd; print(aiosmtpd.__version__)') ready"
