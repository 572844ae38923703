#!/usr/bin/env bash
# Debian packages some tests use: Chromium (browser tests of the HTML report and the serving page) and
# Fashion-MNIST (the real-image dataset). Tests that need one skip with a reason where it is missing.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ ${#need[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
    || echo "install-system-packages: apt-get could not install ${need[*]}; the tests that need them will skip"
else
  echo "install-system-packages: no apt-get or not root; tests needing ${need[*]} will skip"
fi
exit 0
