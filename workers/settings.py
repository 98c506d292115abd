"""`arq workers.settings.WorkerSettings` is retired: `notify-server worker` is the one engine (issue 17).

arq's own Worker used to run the same pipeline beside the batched consumer, on the same keys, with other
failure rules (arq failed a timed-out job at once and counted tries its own way). Two engines on one
protocol drift apart, so there is one. A deployment that still starts arq's worker by this path gets one
line saying what to run instead, and exit code 1 — never a second engine. Producers are unaffected: arq's
`enqueue_job` and `Job.result()` keep working against `notify-server worker`.
"""

from __future__ import annotations

import sys

RETIRED = (
    "notify-server: arq's own worker is retired; run `notify-server worker` instead (the same queue, keys, "
    "configuration and job results; one engine, one retry policy)"
)

print(RETIRED, file=sys.stderr)
raise SystemExit(1)
