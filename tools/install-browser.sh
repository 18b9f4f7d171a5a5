#!/usr/bin/env bash
# Install the headless browser that tests/test_site.py drives: Debian's chromium and
# chromium-driver (the matching chromedriver), from the distribution's own packages,
# so no browser is downloaded from anywhere else. Does nothing when both are present.
#
#   sudo bash tools/install-browser.sh      (CI runs as root: bash tools/install-browser.sh)
#
# The test finds /usr/bin/chromium and /usr/bin/chromedriver. Without them it is skipped
# locally and fails in CI (CI=true), so CI must run this script before `make test`.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    echo "[browser] $(chromium --version 2>/dev/null || echo chromium), $(chromedriver --version 2>/dev/null | head -n1): already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "[browser] chromium/chromedriver are missing and installing them needs root:" >&2
    echo "          sudo bash $0   (or: sudo apt-get update && sudo apt-get install -y chromium chromium-driver)" >&2
    exit 1
fi
if ! have apt-get; then
    echo "[browser] no apt-get here: install Chromium and its chromedriver with your package manager" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "[browser] apt-get update"
apt-get update -q
echo "[browser] apt-get install chromium chromium-driver"
apt-get install -y -q --no-install-recommends chromium chromium-driver
echo "[browser] installed: $(chromium --version), $(chromedriver --version | head -n1)"
