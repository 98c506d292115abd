#!/usr/bin/env bash
cd /work/wt-ha
ulimit -n "$(ulimit -Hn)"
for run in 1 2 3; do  # (a second invocation used 4 5 6)
  for p in 1 2; do
    .venv/bin/python -m bench.load --systems notify --scenarios memory --memory-connections 10000 --runs 1 \
      --serve-processes $p --out /tmp/ha-bench/memory-p$p-r$run.json
  done
done
for run in 1 2 3; do  # (a second invocation used 4 5 6)
  for p in 1 2; do
    .venv/bin/python -m bench.load --systems notify --scenarios main --connections 2000 --rates 500 \
      --long-rates 500 --long-step-s 30 --skip flood --runs 1 --serve-processes $p --out /tmp/ha-bench/main-p$p-r$run.json
  done
done
echo ALL DONE
