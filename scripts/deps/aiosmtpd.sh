#!/usr/bin/env bash
# The SMTP test server: Debian's python3-aiosmtpd, run by tests/servers/smtp_server.py with
# the system interpreter, and the openssl command that makes its certificates at start.
# Skipped when both are present.
set -euo pipefail

if /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null && command -v openssl >/dev/null; then
    echo "python3-aiosmtpd and openssl are installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3-aiosmtpd openssl
/usr/bin/python3 -c 'import aiosmtpd; print("python3-aiosmtpd", aiosmtpd.__version__)'
