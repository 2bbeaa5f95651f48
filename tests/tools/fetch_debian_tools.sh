#!/usr/bin/env bash
# Fetch, once, the real third-party tools the test suite drives, from Debian bookworm:
#   - kubectl 1.20 (package kubernetes-client): `kubectl kustomize` renders deploy/;
#   - prometheus and promtool (package prometheus): rule checks and the end-to-end scrape test;
#   - chromium (package chromium): the /status page test in a real headless browser.
#
# kubernetes-client and prometheus are static Go binaries: their .debs are downloaded and unpacked
# into a cache outside the repository, never installed, so no system service is started and an
# existing kubectl on the machine is left alone. Chromium needs its shared libraries, so it is
# installed with apt-get (as root) when /usr/bin/chromium is missing.
#
# Binaries end up in ${BLUEGREEN_TOOLS_CACHE:-$HOME/.cache/bluegreen/debian-tools}/bin; the tests
# find them with tests/tools/__init__.py. Idempotent: does nothing when everything is present.
set -euo pipefail

CACHE="${BLUEGREEN_TOOLS_CACHE:-$HOME/.cache/bluegreen/debian-tools}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
}

# unpack_deb PACKAGE BINARY...: download PACKAGE's .deb and copy the named binaries into $BIN.
unpack_deb() {
    local package="$1"
    shift
    local missing=0
    for binary in "$@"; do
        [ -x "$BIN/$binary" ] || missing=1
    done
    [ "$missing" = 1 ] || return 0
    local work
    work="$(mktemp -d)"
    (
        cd "$work"
        apt-get download -qq "$package" || { apt_update_once && apt-get download -qq "$package"; }
        dpkg -x ./*.deb root
    )
    for binary in "$@"; do
        install -m 0755 "$work/root/usr/bin/$binary" "$BIN/$binary"
    done
    rm -rf "$work"
}

unpack_deb kubernetes-client kubectl
unpack_deb prometheus prometheus promtool

if [ ! -x /usr/bin/chromium ]; then
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

"$BIN/kubectl" version --client --short 2>/dev/null || "$BIN/kubectl" version --client
"$BIN/promtool" --version | head -1
/usr/bin/chromium --version
