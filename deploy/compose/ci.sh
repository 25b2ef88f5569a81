#!/usr/bin/env bash
# The failure suite, for .ci/run: builds the images (deploy/docker/build.sh)
# and runs the compose cluster's faults and the memory flood
# (go test -tags docker ./deploy/compose/). Without a Docker engine or
# docker-compose it says so and succeeds: the README's main test command
# needs neither.
#
#   deploy/compose/ci.sh                 # build levee:ci and levee-etcd:ci, run the suite
#   NO_BUILD=1 deploy/compose/ci.sh      # the images are built already (deploy/ci-deploy.sh builds them)
#   TAG=dev deploy/compose/ci.sh         # another tag
#
# FAULTS_ARGS passes flags to the suite, e.g.
#   FAULTS_ARGS="-faults.quorum-loss 10s -flood.keys 2000000"
# The fault table is written to $OUT/faults.md, and every phase's calls and
# metrics readings to $OUT/calls/*.csv (OUT default: a temporary directory,
# printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
step() { printf '\n== faults: %s (%ds)\n' "$*" $((SECONDS - start)); }

tag=${TAG:-ci}
if ! docker info >/dev/null 2>&1; then
	step "skipped (no Docker engine answers)"
	exit 0
fi
if ! command -v docker-compose >/dev/null; then
	step "skipped (no docker-compose)"
	exit 0
fi

if [ -z "${NO_BUILD:-}" ]; then
	step "images (deploy/docker/build.sh, tag $tag)"
	TAG=$tag deploy/docker/build.sh
fi

out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
step "suite (go test -tags docker ./deploy/compose/)"
uptime
read -r -a extra <<<"${FAULTS_ARGS:-}"
rc=0
go test -tags docker -count=1 -v -timeout 20m ./deploy/compose/ \
	-args -faults.tag "$tag" -faults.out "$out/faults.md" -faults.dump "$out/calls" "${extra[@]}" || rc=$?
uptime
echo "fault table: $out/faults.md"
step "done"
exit "$rc"
