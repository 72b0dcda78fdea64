# sluice: `make demo` to try it, `make test` to check it. See README.md.

GO         ?= go
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -X main.version=$(VERSION)
# A Consul binary of your own may be named with CONSUL_BIN; otherwise
# bin/consul is built from e2e/consul (Consul v1.14.11, MPL-2.0).
CONSUL_BIN ?= $(CURDIR)/bin/consul
export CONSUL_BIN

.PHONY: all build install consul chromium test unit e2e demo bench bench-balance bench-consul bench-reaction bench-churn vet check fuzz h2spec clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/sluice ./cmd/sluice

# bin/sluice into $(DESTDIR)$(PREFIX)/bin; with INSTALL_UNIT=1 also
# packaging/sluice.service into $(DESTDIR)/etc/systemd/system, its ExecStart
# pointing at $(PREFIX)/bin/sluice. No configuration, no user: see README.md,
# "Install and run as a service".
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 bin/sluice $(DESTDIR)$(PREFIX)/bin/sluice
ifeq ($(INSTALL_UNIT),1)
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local/bin/sluice|$(PREFIX)/bin/sluice|' packaging/sluice.service > $(DESTDIR)/etc/systemd/system/sluice.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/sluice.service
endif

# The race-enabled binary that the e2e tests run.
bin/sluice-race: FORCE
	$(GO) build -race -ldflags "$(LDFLAGS)" -o bin/sluice-race ./cmd/sluice

consul:
	@if [ "$(CONSUL_BIN)" = "$(CURDIR)/bin/consul" ]; then \
	  if [ ! -x bin/consul ] || [ e2e/consul/go.sum -nt bin/consul ]; then \
	    echo "building bin/consul (Consul v1.14.11) from e2e/consul; the first build takes several minutes"; \
	    $(GO) build -C e2e/consul -o ../../bin/consul github.com/hashicorp/consul; \
	  fi; \
	else \
	  test -x "$(CONSUL_BIN)" || { echo "CONSUL_BIN=$(CONSUL_BIN) is not executable" >&2; exit 1; }; \
	fi

# Headless Chromium for the dashboard's browser tests (e2e/dashboard_test.go):
# Debian's chromium package, installed with apt-get when no chromium,
# chromium-browser or google-chrome is on PATH (root, or sudo without a
# password). CHROMIUM_BIN names a browser of your own instead. Without
# one the dashboard tests fail, saying so; they are never skipped.
chromium:
	@if [ -n "$$CHROMIUM_BIN" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium package for the dashboard tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  echo "installing Debian's chromium package for the dashboard tests"; \
	  sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
	  { sudo -n apt-get update && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; \
	else \
	  echo "no chromium on PATH and no way to install it: the dashboard tests will fail (apt-get install chromium, or set CHROMIUM_BIN)" >&2; \
	fi

vet:
	$(GO) vet ./...

# go.mod and go.sum are tidy, and sluice and its tests build and vet for
# macOS and Windows too (it is developed and tested on Linux).
check:
	$(GO) mod tidy -diff
	GOOS=darwin $(GO) build ./...
	GOOS=windows $(GO) build ./...
	GOOS=darwin $(GO) vet ./...
	GOOS=windows $(GO) vet ./...

# Unit and e2e tests, all with -race. e2e runs a real Consul agent, and
# the dashboard's tests headless Chromium.
test: consul chromium bin/sluice-race vet check
	SLUICE_BIN=$(CURDIR)/bin/sluice-race $(GO) test -race -count=1 -timeout 15m ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e: consul chromium bin/sluice-race
	SLUICE_BIN=$(CURDIR)/bin/sluice-race $(GO) test -race -count=1 -timeout 15m -v ./e2e/

# Starts a Consul dev agent (unless one answers on 127.0.0.1:8500), three
# backends with weights 1, 1 and 3, and sluice with config.hcl. Ctrl-C stops
# everything it started.
demo: build consul
	$(GO) build -o bin/demo ./e2e/demo
	bin/demo -sluice bin/sluice -consul "$(CONSUL_BIN)" -config config.hcl

# Reaction time from a Consul write to the last request an instance gets.
bench-reaction: build consul
	SLUICE_BIN=$(CURDIR)/bin/sluice $(GO) test -run '^$$' -bench BenchmarkReaction -benchtime 1x -timeout 20m -v ./e2e/

# The cost of following one big service: sluice's and the Consul agent's
# CPU time for N = 100, 1,000 and 5,000 instances while 20 checks a second
# flip between passing and warning. BENCH_CONSUL_FLAGS passes options,
# e.g. BENCH_CONSUL_FLAGS="-n 1000 -rounds 5 -cpuprofile results/prof".
bench-consul: build consul
	$(GO) build -C e2e/bench -o ../../bin/bench .
	bin/bench consul -sluice bin/sluice -consul "$(CONSUL_BIN)" $(BENCH_CONSUL_FLAGS)

# CPU of sluice (discovery on) and of the Consul agent while 50 checks a
# second flip on 1,000 instances sluice does not route to, for 15 s
# (SLUICE_CHURN_SECONDS).
bench-churn: build consul
	SLUICE_BIN=$(CURDIR)/bin/sluice $(GO) test -run '^$$' -bench BenchmarkChurn -benchtime 1x -timeout 10m -v ./e2e/

# Picker micro-benchmarks.
bench-balance:
	$(GO) test -run '^$$' -bench 'Pick|Build' -benchmem ./balance/

# sluice side by side with HAProxy and nginx (installed from Debian's
# packages when missing): table, results/bench-*/results.md and chart.png.
# BENCH_FLAGS passes options, e.g. BENCH_FLAGS="-rounds 5 -d 10s".
bench: build consul
	$(GO) build -C e2e/bench -o ../../bin/bench .
	bin/bench -sluice bin/sluice -consul "$(CONSUL_BIN)" $(BENCH_FLAGS)
	$(MAKE) --no-print-directory bench-balance

# HTTP/2 conformance: h2spec (strict) against sluice's listener and proxy
# in front of a loopback backend, over h2c and over TLS with ALPN h2
# (TestH2Spec and TestH2SpecTLS in proxy/).
# bin/h2spec is installed with go install when missing; H2SPEC_VERSION
# picks another release.
H2SPEC_VERSION ?= v2.2.1+incompatible
h2spec:
	@test -x bin/h2spec || GOBIN=$(CURDIR)/bin $(GO) install github.com/summerwind/h2spec/cmd/h2spec@$(H2SPEC_VERSION)
	PATH="$(CURDIR)/bin:$$PATH" SLUICE_H2SPEC=$(CURDIR)/bin/h2spec $(GO) test -count=1 -run '^TestH2Spec(TLS)?$$' -v ./proxy/

# Every fuzz target of every package (found with go test -list), one at a
# time, each for FUZZTIME. New inputs that fail land in the package's
# testdata/fuzz; the rest of the corpus stays in the Go build cache. One
# worker each: with two, FuzzUpstreamAnswer (loopback sockets) stalls here.
FUZZTIME ?= 30s
fuzz:
	@list=$$($(GO) test -list '^Fuzz' ./...) || { echo "$$list"; exit 1; }; \
	targets=$$(echo "$$list" | awk '/^Fuzz/ { names = names " " $$1; next } /^ok/ { n = split(names, a, " "); for (i = 1; i <= n; i++) print $$2 ":" a[i]; names = "" }'); \
	test -n "$$targets" || { echo "no fuzz targets found" >&2; exit 1; }; \
	for t in $$targets; do \
	  pkg=$${t%%:*}; name=$${t#*:}; \
	  echo "== $$name in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -parallel 1 $$pkg || exit 1; \
	done

clean:
	rm -rf bin/ results/

FORCE:
