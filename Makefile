# Meridian. Two commands matter: `make lab` and `make test` (see README.md).
SHELL := /bin/bash
BIN := $(CURDIR)/bin
GO ?= go
GOFLAGS_STATIC := CGO_ENABLED=0
LDFLAGS := -s -w
# Debian packages the lab, the tests and the benchmarks run.
DEBS := etcd-server frr bird2 containernetworking-plugins iperf3 nftables iproute2 \
	netcat-openbsd tcpdump iputils-ping conntrack wget curl patch
# Installed without their recommends (qemu's would pull a GUI): the VM that
# runs the IPIP tests on kernels without ipip (integration/vm).
DEBS_NO_RECOMMENDS := qemu-system-x86
LAB_NODES ?= 3

.PHONY: all build meridian tools deps lab lab-down test unit-test integration-test vm-test chart-test chart-crds image bench fuzz api fmt vet clean

all: build

build: meridian tools

# Meridian's own binaries, statically linked: the image's four and the lab.
meridian:
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ \
		./daemon/cmd/meridiand ./daemon/cmd/meridianctl \
		./cni-plugin/cmd/meridian-cni ./hack/image/meridian-install-cni \
		./integration/cmd/meridian-lab

# Third-party tools built from the Go module proxy (hack/build-tools.sh),
# each skipped when bin/ already matches its module: the Kubernetes control
# plane, kubectl and kube-proxy; CoreDNS (the lab's cluster DNS); helm (the
# chart tests). kube-network-policies, only the benchmark's peer, is built
# by `make bench`, which keeps a cold `make test` shorter.
TOOLS ?= kubernetes coredns helm
BENCH_TOOLS := kubernetes coredns helm kube-network-policies
tools:
	TOOLS="$(TOOLS)" hack/build-tools.sh $(BIN)

# Installs the Debian packages that are missing (needs root).
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	bare=""; for p in $(DEBS_NO_RECOMMENDS); do dpkg -s $$p >/dev/null 2>&1 || bare="$$bare $$p"; done; \
	if [ -n "$$missing$$bare" ]; then \
		echo "installing:$$missing$$bare"; \
		apt-get update -qq || exit 1; \
		if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing || exit 1; fi; \
		if [ -n "$$bare" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$bare || exit 1; fi; \
	fi

# The lab installs Meridian with `helm install` of charts/meridian; its
# nodes run the DaemonSet's pods from bin/meridian-image.tar.
lab: deps build image
	$(BIN)/meridian-lab up --nodes $(LAB_NODES)
	$(BIN)/meridian-lab walkthrough

lab-down:
	$(BIN)/meridian-lab down

# image first: the labs run the chart's pods from bin/meridian-image.tar
# (without it each lab would build its own from bin/).
test: deps build image unit-test integration-test chart-test

# Every package outside integration/, with the race detector; kernel tests
# in throw-away namespaces run when root and skip otherwise. Packages that
# run a real GoBGP server go without -race: GoBGP v3.37 itself races (its
# ListPeer reads FSM state its FSM goroutines write, see bgp/gobgp), which
# the detector reports however our code behaves.
GOBGP_PKGS := ./bgp/gobgp ./daemon/cmd/meridiand
unit-test:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /integration/ | grep -v -e '/bgp/gobgp$$' -e '/daemon/cmd/meridiand$$' -e '/charts$$')
	$(GO) test -count=1 $(GOBGP_PKGS)

# The kernel and lab tests, which fail instead of skipping when the lab
# cannot run.
integration-test:
	MERIDIAN_BIN_DIR=$(BIN) MERIDIAN_REQUIRE_LAB=1 $(GO) test -count=1 -timeout 30m -p 1 ./integration/...

# The IPIP kernel tests in a QEMU VM booting Debian's kernel
# (integration/vm), whatever the host kernel has; integration-test runs them
# there only when the host has no ipip. VM_PKGS="./daemon/routes ..." picks
# the packages (default: integration/vm's VMPackages).
VM_PKGS ?=
vm-test: deps
	MERIDIAN_VM=1 MERIDIAN_VM_PKGS="$(VM_PKGS)" MERIDIAN_BIN_DIR=$(BIN) MERIDIAN_REQUIRE_LAB=1 \
		$(GO) test -count=1 -timeout 20m -v -run TestIPIPTestsInVM ./integration/vm/

# The Helm chart: helm lint, helm template with the default values and with
# charts/meridian/ci/all-values.yaml, schema refusals, and the rendered objects
# decoded into typed Kubernetes objects. bin/helm comes from `make tools`;
# MERIDIAN_REQUIRE_LAB=1 makes its absence a failure instead of a skip.
chart-test:
	MERIDIAN_BIN_DIR=$(BIN) MERIDIAN_REQUIRE_LAB=1 $(GO) test -count=1 ./charts/...

# Refreshes the chart's copy of the CRDs after hack/gen-crds.sh; chart-test
# fails while the two differ.
chart-crds:
	rm -f charts/meridian/crds/*.yaml
	cp api/crd/manifests/*.yaml charts/meridian/crds/

# bin/meridian-image.tar: meridiand, meridianctl, meridian-cni and the chart's
# CNI installer in one image, written by hack/image without a container
# engine (docker-archive; `ctr images import`, `docker load`). Tagged
# ghcr.io/meridian-net/meridian:<appVersion of charts/meridian>, the chart's
# default image; IMAGE_REF overrides it.
IMAGE_REF ?=
image: meridian
	$(GO) run ./hack/image --output $(BIN)/meridian-image.tar --bin-dir $(BIN) \
		--chart charts/meridian/Chart.yaml $(if $(IMAGE_REF),--ref $(IMAGE_REF))

# Measures on a fresh lab and leaves it running.
bench: deps build
	TOOLS="$(BENCH_TOOLS)" hack/build-tools.sh $(BIN)
	$(BIN)/meridian-lab up --nodes $(LAB_NODES)
	$(BIN)/meridian-lab bench --out bench/results.json

# Every parser and pure function that takes outside input, 30 s each.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./cni-plugin/config
	$(GO) test -run '^$$' -fuzz FuzzDesired -fuzztime 30s ./daemon/routes
	$(GO) test -run '^$$' -fuzz FuzzDesired -fuzztime 30s ./daemon/services
	$(GO) test -run '^$$' -fuzz FuzzCompile -fuzztime 30s ./policy
	$(GO) test -run '^$$' -fuzz FuzzImportPolicy -fuzztime 30s ./bgp
	$(GO) test -run '^$$' -fuzz FuzzParseCommunity -fuzztime 30s ./bgp
	$(GO) test -run '^$$' -fuzz FuzzPathFromUpdate -fuzztime 30s ./bgp/gobgp
	$(GO) test -run '^$$' -fuzz FuzzParseEvaluate -fuzztime 30s ./daemon/apiserver
	$(GO) test -run '^$$' -fuzz FuzzParseRouteFilter -fuzztime 30s ./daemon/apiserver

# Regenerates the gRPC API's Go code from api/meridian/v1/meridian.proto.
api:
	@command -v protoc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler)
	hack/gen-api.sh

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
