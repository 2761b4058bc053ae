#!/usr/bin/env bash
# Installs Debian's Prometheus (server and promtool) for the alert-rule tests. The tests start
# their own instances on loopback ports, so the packaged service is kept from starting.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    echo "prometheus: already installed ($(prometheus --version 2>&1 | head -n 1))"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

# policy-rc.d answering 101 tells the package scripts not to start the service.
policy=/usr/sbin/policy-rc.d
added_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=true
fi
cleanup() {
    if [ "$added_policy" = true ]; then
        $sudo rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus

# Should a service manager have started it anyway, stop and disable it: nothing here needs it.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

prometheus --version 2>&1 | head -n 1
promtool --version 2>&1 | head -n 1
