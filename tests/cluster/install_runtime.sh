#!/usr/bin/env bash
# Install, once, the Debian packages the single-node test cluster (bin/cluster) runs:
#   containerd (1.6, its CRI plugin speaks v1alpha2 to kubelet 1.20), runc,
#   containernetworking-plugins (bridge, host-local, loopback), iptables and conntrack for
#   kube-proxy, dnsmasq-base for cluster DNS, and buildah + mmdebstrap for the images.
# Installing starts no service: bin/cluster runs its own containerd (own root, state and socket)
# and its own dnsmasq, and stops them on `bin/cluster down`. Idempotent; needs root.
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins iptables conntrack dnsmasq-base buildah mmdebstrap)
missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [[ "$status" == installed ]] || missing+=("$package")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]]; then
    echo "install_runtime.sh: needs root to install ${missing[*]}" >&2
    exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A package's service must not start (on machines without a policy-rc.d that forbids it).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
fi
trap '((added_policy)) && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
