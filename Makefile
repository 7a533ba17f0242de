# Convenience targets. Tests: bash scripts/test.sh (see README).

.PHONY: build bench soak

# build: the tidemark binary in bin/.
build:
	go build -o bin/tidemark ./cmd/tidemark

# bench: the side-by-side benchmarks of e2e/bench against peer tools. They
# need what scripts/deps.sh installs (PostgreSQL, MinIO, pgBackRest), take
# minutes each, load the machine (run nothing else meanwhile: they measure
# latency), and print their tables at the end. BENCH picks some by name:
# make bench BENCH=WAL runs TestBenchWAL and TestBenchWALSummaries;
# BENCH=WALSummaries the latter only.
BENCH ?=
bench:
	TIDEMARK_BENCH=1 go test -count=1 -timeout 180m -v -run '^TestBench$(BENCH)' ./e2e/bench/

# soak: the long test, never in CI (about three and a half hours on 2 cores):
# SOAK (default 30m) of everything at once (e2e/soak_test.go: pgbench,
# archiving, backups killed with SIGKILL, expire and gc), then verify
# --read-data, every kept snapshot drilled and 20 exact point-in-time
# recoveries; then the incremental-equivalence test over SOAK_SEEDS (default
# 100) seeds. A short run proves the machinery: make soak SOAK=5m SOAK_SEEDS=3.
# See scripts/soak.sh for the other knobs.
SOAK ?= 30m
SOAK_SEEDS ?= 100
soak:
	TIDEMARK_SOAK_DURATION=$(SOAK) TIDEMARK_SOAK_SEEDS=$(SOAK_SEEDS) bash scripts/soak.sh
