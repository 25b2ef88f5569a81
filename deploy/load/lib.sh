# lib.sh: what the load scripts share. Source it after `set -euo pipefail`:
# it makes $root (the checkout), $work (a temporary directory removed on
# exit, with every process in $pids killed first), $ghz (installed at the
# pinned version if missing) and $work/levee (LEVEE_BIN, a prebuilt binary
# for A/B runs in one sitting, or this checkout built).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

ghz=$(command -v ghz || echo "$(go env GOPATH)/bin/ghz")
if [ ! -x "$ghz" ]; then
	go install github.com/bojand/ghz/cmd/ghz@v0.120.0
fi
if [ -n "${LEVEE_BIN:-}" ]; then
	cp "$LEVEE_BIN" "$work/levee"
else
	echo "building levee..." >&2
	go build -C "$root" -o "$work/levee" ./cmd/levee
fi
