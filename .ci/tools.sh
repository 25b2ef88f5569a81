#!/usr/bin/env bash
# Installs the pinned tools CI and the proto workflow need, if missing.
set -euo pipefail
bin="$(go env GOPATH)/bin"
want() { # name module@version
  if ! [ -x "$bin/$1" ] || ! go version -m "$bin/$1" 2>/dev/null | grep -q "${2#*@}"; then
    echo "installing $2"
    (cd / && go install "$2")
  fi
}
want buf github.com/bufbuild/buf/cmd/buf@v1.73.0
want protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
want protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
