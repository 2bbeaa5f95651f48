#!/usr/bin/env bash
# Instructions per proxied request under callgrind (load-independent, unlike wall-clock):
# runs benchmarks/hot_path.measure for 2000 and 6000 requests of each kind and prints
# (Ir(6000) - Ir(2000)) / 4000, so start-up and warm-up cancel out.
# Usage: bash benchmarks/callgrind_per_request.sh   (from the repository root, after bin/setup)
# ACCESS_LOG=json (or clf) measures with the access log on, its lines sent to /dev/null.
# SESSION=cookie (or drain) measures with session.affinity on (see hot_path.measure).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
instructions() {  # kind count -> total Ir of one run
    valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$py" -c \
        "import benchmarks.hot_path as h; h.measure(h.$1, $2, '${ACCESS_LOG:-off}', '${SESSION:-off}')" \
        >/dev/null 2>"$tmp/err" \
        || { cat "$tmp/err" >&2; exit 1; }
    grep -E '^(summary|totals):' "$tmp/out" | head -1 | awk '{print $2}'
}
kinds="REQUEST BROWSER_REQUEST"
# Just after a switch only a request with the cookie stays on blue, where the pool is.
[ "${SESSION:-off}" = drain ] && kinds=BROWSER_REQUEST
for kind in $kinds; do
    small=$(instructions "$kind" 2000)
    large=$(instructions "$kind" 6000)
    echo "$kind: $(( (large - small) / 4000 )) instructions per request"
done
