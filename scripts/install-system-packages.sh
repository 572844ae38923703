#!/usr/bin/env bash
# Debian packages the tests and the guide use: Chromium (browser tests of the HTML report and the serving
# page), Fashion-MNIST, the Wesnoth, Freeciv and FreeOrion game data, the emoji and CJK fonts and Unicode
# data (the real-image datasets) and curl (the guide's serve block). Tests that need one FAIL where it is
# missing, so this script fails loudly (exit 1) when it cannot install them: a green CI has run every test.
# (wesnoth-1.16-data is Debian 12's name; other releases name it after their Wesnoth version.)
set -euo pipefail
# One line per package: the check that it is already there, then the Debian package that provides it.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
compgen -G "/usr/share/games/wesnoth/*/data/core/units" >/dev/null || need+=(wesnoth-1.16-data)
[ -d /usr/share/games/freeciv/nation ] || need+=(freeciv-data)
[ -f /usr/share/games/freeorion/default/stringtables/en.txt ] || need+=(freeorion-data)
command -v curl >/dev/null 2>&1 || need+=(curl)
# the emoji and CJK real sets (picovlm/data/emoji.py, cjk.py): fonts, Unicode's and CLDR's data, and the
# library Pillow's bundled text shaping loads to join emoji sequences into one glyph
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)
[ -f /usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
[ -f /usr/share/unicode/Unihan_Readings.txt.bz2 ] || need+=(unicode-data)
[ -f /usr/share/unicode/cldr/common/annotations/en.xml ] || need+=(unicode-cldr-core)
ldconfig -p 2>/dev/null | grep 'libfribidi\.so\.0' >/dev/null || need+=(libfribidi0)  # no -q: pipefail
[ ${#need[@]} -eq 0 ] && exit 0

fail() {
  echo "install-system-packages: $1" >&2
  echo "install-system-packages: install them by hand (Debian/Ubuntu: apt-get install -y ${need[*]});" \
    "the tests that need them fail until then" >&2
  exit 1
}
command -v apt-get >/dev/null 2>&1 || fail "no apt-get here to install ${need[*]}"
sudo=()
if [ "$(id -u)" != "0" ]; then
  sudo -n true 2>/dev/null || fail "not root and no password-less sudo to install ${need[*]}"
  sudo=(sudo -n)
fi
echo "install-system-packages: apt-get install ${need[*]}"
log=$(mktemp)
if ! { "${sudo[@]}" apt-get update -qq \
  && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  fail "apt-get could not install ${need[*]}"
fi
rm -f "$log"
for package in "${need[@]}"; do  # apt-get can exit 0 and still leave a package out
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || fail "$package is still not installed after apt-get"
done
