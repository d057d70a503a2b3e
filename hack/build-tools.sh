#!/usr/bin/env bash
# Builds the third-party programs the lab and the benchmarks run, through the
# Go module proxy, into bin/ (or $1):
#   integration/tools                        kube-apiserver, kube-controller-manager,
#                                            kube-scheduler, kubectl, kube-proxy
#   integration/tools/coredns                coredns (with its kubernetes plugin)
#   integration/tools/helm                   helm
#   integration/tools/kube-network-policies  kube-network-policies
# CoreDNS, Helm and kube-network-policies live in modules of their own: in the
# Kubernetes module, CoreDNS and Helm would raise the etcd client, gRPC,
# OpenTelemetry, golang.org/x and kustomize under the control plane (so it
# would no longer be Kubernetes v1.37's own dependency set, and all of it would
# recompile), and kube-network-policies v0.8.0 does not compile against
# Kubernetes v1.37's runtime-spec (containerd/nri v0.9.0).
# Each module is rebuilt only when its go.mod, go.sum or build command
# changes: a stamp per module in bin/ records the hash they were built from,
# and Go's build cache makes a rebuild after a change cheap anyway.
# TOOLS (space-separated: kubernetes coredns helm kube-network-policies)
# limits the build to those modules; the default is all of them. The lab
# and its tests need kubernetes and coredns; helm and kube-network-policies
# only the chart check and the policy benchmark.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bin}
tools=$root/integration/tools
mkdir -p "$out"
export CGO_ENABLED=0

# build NAME DIR "BINS" GO-BUILD-ARGS...: runs `go build GO-BUILD-ARGS` in DIR
# unless every one of BINS is in $out and the module's stamp matches.
build() {
  local name=$1 dir=$2 bins=$3; shift 3
  local stamp stampfile=$out/.tools-stamp-$name ok=1 b start
  if [[ -n ${TOOLS:-} && " $TOOLS " != *" $name "* ]]; then
    return 0
  fi
  stamp=$( { cat "$dir/go.mod" "$dir/go.sum"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16)
  for b in $bins; do [[ -x $out/$b ]] || ok=0; done
  if [[ $ok == 1 && -f $stampfile && $(cat "$stampfile") == "$stamp" ]]; then
    return 0
  fi
  echo "building $bins from $dir" >&2
  start=$SECONDS
  (cd "$dir" && go build -trimpath "$@")
  echo "$stamp" > "$stampfile"
  echo "built $bins in $((SECONDS - start))s" >&2
}

# modversion DIR MODULE: the version of MODULE that DIR's go.mod selects.
modversion() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }

k8s_version=$(modversion "$tools" k8s.io/kubernetes)
v=${k8s_version#v}
major=${v%%.*}; rest=${v#*.}; minor=${rest%%.*}
ld="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ld+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
done
[[ -x $out/kube-apiserver ]] || echo "building Kubernetes $k8s_version tools into $out (first build takes 15-30 minutes)" >&2
build kubernetes "$tools" "kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy" \
  -tags selinux,notest,grpcnotrace -ldflags "$ld" -o "$out/" tool

d=$tools/coredns
build coredns "$d" coredns \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$(modversion "$d" github.com/coredns/coredns)" \
  -o "$out/coredns" github.com/coredns/coredns

d=$tools/helm
build helm "$d" helm \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$(modversion "$d" helm.sh/helm/v4) -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
  -o "$out/helm" helm.sh/helm/v4/cmd/helm

d=$tools/kube-network-policies
build kube-network-policies "$d" kube-network-policies \
  -ldflags "-s -w" -o "$out/kube-network-policies" sigs.k8s.io/kube-network-policies/cmd
