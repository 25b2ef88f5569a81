#!/usr/bin/env bash
# The deployment checks, for .ci/run:
#   - the Kubernetes manifests, validated offline (deploy/k8s, its own Go
#     module: strict decoding, kustomize builds, reviewer checks, and the
#     deliberate breakages that must fail);
#   - the etcd build module is tidy and pins levee's etcd version;
#   - where a Docker engine answers: the images built (deploy/docker/build.sh)
#     and smoke-tested: the version is stamped, the user is not root, and a
#     standalone node in the levee image becomes healthy by its own
#     HEALTHCHECK (levee probe).
# Without Docker the image steps are skipped, and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { printf '\n== deploy: %s (%ds)\n' "$*" $((SECONDS - start)); }

step "Kubernetes manifests (deploy/k8s)"
(
	cd deploy/k8s
	go mod tidy -diff
	go vet ./...
	go test -count=1 ./...
)

step "etcd build module (deploy/docker/etcd)"
(cd deploy/docker/etcd && go mod tidy -diff)
want=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
have=$(go -C deploy/docker/etcd list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
if [ "$want" != "$have" ]; then
	echo "deploy/docker/etcd pins etcd $have, levee $want"
	exit 1
fi

if ! docker info >/dev/null 2>&1; then
	step "images: skipped (no Docker engine answers)"
	exit 0
fi

step "images (deploy/docker/build.sh)"
TAG=ci deploy/docker/build.sh

step "image smoke test"
version=$(docker run --rm levee:ci version)
echo "$version"
case $version in
"levee "?*) ;;
*)
	echo "levee:ci version: $version"
	exit 1
	;;
esac
for img in levee:ci levee-etcd:ci; do
	user=$(docker image inspect -f '{{.Config.User}}' "$img")
	case $user in
	"" | 0 | 0:* | root*)
		echo "$img runs as root ($user)"
		exit 1
		;;
	esac
done
etcd_version=$(docker run --rm levee-etcd:ci --version)
echo "${etcd_version%%$'\n'*}"
cid=$(docker run -d levee:ci)
trap 'docker rm -f "$cid" >/dev/null' EXIT
status=starting
for _ in $(seq 60); do
	status=$(docker inspect -f '{{.State.Health.Status}}' "$cid")
	[ "$status" = starting ] || break
	sleep 1
done
if [ "$status" != healthy ]; then
	echo "levee:ci standalone: health $status"
	docker logs "$cid" 2>&1 | tail -20
	exit 1
fi
docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$cid" | grep . | tail -1
step "done"
