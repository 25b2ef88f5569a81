#!/usr/bin/env bash
# Builds levee's container images with no registry: the binaries are built
# here with Go (static: CGO_ENABLED=0, -trimpath) and copied into FROM
# scratch images, so nothing is pulled.
#
#   deploy/docker/build.sh            # levee:dev and levee-etcd:dev
#   TAG=v1 deploy/docker/build.sh levee
#
# Arguments name the images to build: levee, etcd (default both).
# Environment: TAG (default dev), VERSION (default git describe), OUT (keep
# the built binaries in this directory), GO (default go), DOCKER (default
# docker).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tag=${TAG:-dev}
go=${GO:-go}
docker=${DOCKER:-docker}
version=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(levee etcd)

# The unprivileged user of both images (the "nonroot" of distroless).
uid=65532

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# rootfs DIR writes the few files a scratch image needs into DIR: a user
# and group for the numeric UID, an empty data directory, and /tmp.
rootfs() {
	mkdir -p "$1/rootfs/etc" "$1/rootfs/tmp" "$1/data"
	chmod 1777 "$1/rootfs/tmp"
	printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/:/sbin/nologin\n' "$uid" "$uid" >"$1/rootfs/etc/passwd"
	printf 'root:x:0:\nnonroot:x:%d:\n' "$uid" >"$1/rootfs/etc/group"
}

# image NAME DOCKERFILE CONTEXT builds and reports the image's size.
image() {
	cp "$2" "$3/Dockerfile"
	# The legacy builder: it needs no buildx plugin and no BuildKit image.
	local log
	if ! log=$(DOCKER_BUILDKIT=0 "$docker" build --build-arg VERSION="$version" -t "$1" "$3" 2>&1); then
		echo "$log" >&2
		exit 1
	fi
	echo "$1: $("$docker" image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1/1e6}')"
}

for img in "${images[@]}"; do
	case $img in
	levee)
		ctx=$work/levee
		rootfs "$ctx"
		CGO_ENABLED=0 "$go" build -C "$root" -trimpath \
			-ldflags "-s -w -X main.version=$version" -o "$ctx/levee" ./cmd/levee
		"$ctx/levee" version
		image "levee:$tag" "$here/levee.Dockerfile" "$ctx"
		;;
	etcd)
		ctx=$work/etcd
		rootfs "$ctx"
		# etcd is built in its own module (deploy/docker/etcd), which must
		# pin the version levee's go.mod does.
		want=$("$go" -C "$root" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
		have=$("$go" -C "$here/etcd" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
		if [ "$want" != "$have" ]; then
			echo "build.sh: levee pins go.etcd.io/etcd/server/v3 $want, deploy/docker/etcd pins $have; update it:" >&2
			echo "  cd deploy/docker/etcd && go get -tool go.etcd.io/etcd/server/v3@$want go.etcd.io/etcd/etcdctl/v3@$want && go mod tidy" >&2
			exit 1
		fi
		for p in etcd:go.etcd.io/etcd/server/v3 etcdctl:go.etcd.io/etcd/etcdctl/v3; do
			CGO_ENABLED=0 "$go" build -C "$here/etcd" -trimpath -ldflags "-s -w" -o "$ctx/${p%%:*}" "${p#*:}"
		done
		# sed, not head: head exits after one line and etcd, writing the next, dies
		# of SIGPIPE, which pipefail turns into a failed build.
		"$ctx/etcd" --version | sed -n 1p
		image "levee-etcd:$tag" "$here/etcd.Dockerfile" "$ctx"
		;;
	*)
		echo "build.sh: unknown image $img (want levee or etcd)" >&2
		exit 2
		;;
	esac
	if [ -n "${OUT:-}" ]; then
		mkdir -p "$OUT"
		find "$ctx" -maxdepth 1 -type f -perm -u+x -exec cp {} "$OUT/" \;
	fi
done
