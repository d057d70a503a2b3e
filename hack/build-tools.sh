#!/usr/bin/env bash
# Builds the Kubernetes control plane and kubectl that the lab runs, from the
# tools module (integration/tools) through the Go module proxy. The binaries
# are rebuilt only when the tools module changes: a stamp records the hash of
# go.mod/go.sum they were built from, and Go's build cache makes a rebuild
# after a change cheap anyway.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bin}
tools=$root/integration/tools
mkdir -p "$out"
k8s_version=$(awk '$1=="k8s.io/kubernetes"{print $2; exit} $1=="require" && $2=="k8s.io/kubernetes"{print $3; exit}' "$tools/go.mod")
stamp=$(cat "$tools/go.mod" "$tools/go.sum" "$0" | sha256sum | cut -c1-16)
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ok=1
for b in "${bins[@]}"; do [[ -x $out/$b ]] || ok=0; done
if [[ $ok == 1 && -f $out/.tools-stamp && $(cat "$out/.tools-stamp") == "$stamp" ]]; then
  exit 0
fi
v=${k8s_version#v}
major=${v%%.*}; rest=${v#*.}; minor=${rest%%.*}
ld="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ld+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
done
echo "building Kubernetes $k8s_version tools into $out (first build takes 15-30 minutes)" >&2
cd "$tools"
CGO_ENABLED=0 go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$out/" tool
echo "$stamp" > "$out/.tools-stamp"
