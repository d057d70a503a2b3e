#!/usr/bin/env bash
# Regenerates the Go code of the gRPC API (api/) from its .proto files. The
# generated code is committed, so building Meridian never needs protoc; this
# script needs protoc on PATH (Debian: apt-get install protobuf-compiler) and
# installs the two Go plugins at pinned versions into a temporary GOBIN, so
# the output depends only on these versions and protoc's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# protoc-gen-go matches the google.golang.org/protobuf runtime in go.mod.
protoc_gen_go=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
protoc_gen_go_grpc=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2

command -v protoc >/dev/null || { echo "gen-api: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
# Outside the module, so go.mod is neither read nor changed.
for tool in "$protoc_gen_go" "$protoc_gen_go_grpc"; do
  (cd "$bin" && GOBIN=$bin GOFLAGS= go install "$tool")
done

cd "$root/api"
mapfile -t protos < <(find . -name '*.proto' | sort)
PATH=$bin:$PATH protoc -I . \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  "${protos[@]}"
echo "gen-api: generated from ${#protos[@]} proto file(s) with $(protoc --version)" >&2
