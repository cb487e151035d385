"""Celery client for the Krill benchmark; prints one JSON line.

  client.py throughput N CMD   submit N tasks as fast as possible, wait for all results
  client.py latency N CMD      one task at a time, N times
"""
import json
import sys
import time

from tasks import run


def throughput(n, cmd):
    t0 = time.perf_counter()
    pending = [run.delay(cmd) for _ in range(n)]
    failed = 0
    for r in pending:
        out = r.get(timeout=600)
        failed += out["code"] != 0
    elapsed = time.perf_counter() - t0
    return {"n": n, "seconds": elapsed, "rate": n / elapsed, "failed": failed}


def latency(n, cmd):
    samples = []
    failed = 0
    for _ in range(n):
        t0 = time.perf_counter()
        out = run.delay(cmd).get(timeout=60)
        samples.append((time.perf_counter() - t0) * 1e3)
        failed += out["code"] != 0
    samples.sort()

    def pct(p):
        import math
        rank = max(1, min(len(samples), math.ceil(p / 100 * len(samples))))
        return samples[rank - 1]

    return {"n": n, "p50_ms": pct(50), "p99_ms": pct(99), "failed": failed}


if __name__ == "__main__":
    mode, n, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # One warm-up task: connection set-up and the result consumer are not what is measured.
    run.delay(cmd).get(timeout=60)
    print(json.dumps(throughput(n, cmd) if mode == "throughput" else latency(n, cmd)))
