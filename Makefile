# Convenience targets. Tests: bash scripts/test.sh (see README).

.PHONY: build bench

# build: the tidemark binary in bin/.
build:
	go build -o bin/tidemark ./cmd/tidemark

# bench: the side-by-side benchmarks of e2e/bench against peer tools. They
# need what scripts/deps.sh installs (PostgreSQL, MinIO, pgBackRest), take
# minutes each, load the machine (run nothing else meanwhile: they measure
# latency), and print their tables at the end. BENCH picks some by name:
# make bench BENCH=WAL runs TestBenchWAL only.
BENCH ?=
bench:
	TIDEMARK_BENCH=1 go test -count=1 -timeout 180m -v -run '^TestBench$(BENCH)' ./e2e/bench/
