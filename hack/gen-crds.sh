#!/usr/bin/env bash
# Regenerates api/crd/v1alpha1/zz_generated.deepcopy.go and the CRD manifests
# in api/crd/manifests/ from the Go types. The output is committed, so builds
# and `make test` never need controller-gen; run this after editing a type.
set -euo pipefail

CONTROLLER_TOOLS_VERSION=v0.23.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT

# Installed from outside the module so controller-tools' dependencies never
# touch go.mod.
(cd "$gobin" && GOBIN="$gobin" GOFLAGS=-mod=mod go install \
	"sigs.k8s.io/controller-tools/cmd/controller-gen@${CONTROLLER_TOOLS_VERSION}")

cd "$root"
rm -f api/crd/manifests/*.yaml
"$gobin/controller-gen" \
	object \
	crd:crdVersions=v1 \
	paths=./api/crd/v1alpha1/... \
	output:crd:dir=./api/crd/manifests
