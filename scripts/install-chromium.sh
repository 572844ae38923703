#!/usr/bin/env bash
# Headless Chromium for the browser tests (the HTML report and the serving page). Debian's package;
# the tests skip with a reason where it cannot be installed (no apt, not root).
set -u
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
    || echo "install-chromium: apt-get could not install chromium; browser tests will be skipped"
else
  echo "install-chromium: no apt-get or not root; browser tests will be skipped"
fi
exit 0
