#!/usr/bin/env bash
# Builds the third-party programs the lab and the benchmarks run, through the
# Go module proxy, into bin/ (or $1):
#   integration/tools                        kube-apiserver, kube-controller-manager,
#                                            kube-scheduler, kubectl, kube-proxy
#   integration/tools/coredns                coredns (with its kubernetes plugin)
#   integration/tools/helm                   helm
#   integration/tools/kube-network-policies  kube-network-policies, and
#                                            kube-network-policies-xtqueue
#                                            (the same release patched with
#                                            xtqueue.patch, see below)
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

# kube-network-policies-xtqueue: the release with its nftables `queue`
# expressions replaced by the xtables NFQUEUE target (xtqueue.patch), for
# kernels built without CONFIG_NFT_QUEUE, which refuse the release's whole
# table; the policy benchmark falls back to it there (docs/benchmarks.md).
# The source is the module cache's copy of the version go.mod pins, patched
# in a temporary directory and built through a `replace` in a temporary
# copy of go.mod: nothing of kube-network-policies lands in this tree.
build_knp_xtqueue() {
  local dir=$1 bin=kube-network-policies-xtqueue
  local patchfile=$dir/xtqueue.patch stampfile=$out/.tools-stamp-kube-network-policies-xtqueue
  local version src tmp stamp start
  if [[ -n ${TOOLS:-} && " $TOOLS " != *" kube-network-policies "* ]]; then
    return 0
  fi
  command -v patch >/dev/null || { echo "need patch(1) for $bin (Debian: apt-get install patch, or make deps)" >&2; return 1; }
  stamp=$( { cat "$dir/go.mod" "$dir/go.sum" "$patchfile"; echo "$0 xtqueue v1"; } | sha256sum | cut -c1-16)
  if [[ -x $out/$bin && -f $stampfile && $(cat "$stampfile") == "$stamp" ]]; then
    return 0
  fi
  version=$(modversion "$dir" sigs.k8s.io/kube-network-policies)
  echo "building $bin from sigs.k8s.io/kube-network-policies@$version + $patchfile" >&2
  start=$SECONDS
  src=$(cd "$dir" && go mod download -json "sigs.k8s.io/kube-network-policies@$version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [[ -n $src && -d $src ]] || { echo "no module cache directory for sigs.k8s.io/kube-network-policies@$version" >&2; return 1; }
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/knp-xtqueue.XXXXXX")
  # The module cache is read-only; the copy must not be.
  cp -r "$src" "$tmp/src" && chmod -R u+w "$tmp/src"
  # --fuzz=0 and --forward: a hunk that does not match exactly (a new
  # upstream version) fails the build instead of patching something else.
  if ! (cd "$tmp/src" && patch -p1 --forward --fuzz=0 --batch --no-backup-if-mismatch --quiet <"$patchfile"); then
    echo "$patchfile does not apply to sigs.k8s.io/kube-network-policies@$version" >&2
    rm -rf "$tmp"; return 1
  fi
  cp "$dir/go.mod" "$dir/go.sum" "$tmp/"
  echo "replace sigs.k8s.io/kube-network-policies => ./src" >>"$tmp/go.mod"
  if ! (cd "$tmp" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/$bin" sigs.k8s.io/kube-network-policies/cmd); then
    rm -rf "$tmp"; return 1
  fi
  rm -rf "$tmp"
  echo "$stamp" >"$stampfile"
  echo "built $bin in $((SECONDS - start))s" >&2
}
build_knp_xtqueue "$tools/kube-network-policies"
