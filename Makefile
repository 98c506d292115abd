.PHONY: run test bench
run:  ## the service with a demo page, embedded Postgres and Redis when none is configured
	scripts/run.sh
test:  ## the whole test suite
	scripts/test.sh
bench:  ## the benchmark (docs/benchmarks.md)
	scripts/bench.sh
