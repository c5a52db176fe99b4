"""One side of a colocation run, on a real GPU (used by bench/colocation.py).

    python bench/colocation_worker.py ls SECONDS OUT.json     latency-sensitive: decode steps
    python bench/colocation_worker.py tp SECONDS OUT.json     throughput: bf16 matrix products

The latency job is one decoding step of attention for a batch of 8 sequences of 32K tokens at
Llama-3.1-8B head shapes (32 query heads, 8 KV heads, dim 128), issued every 2 ms; it records
each step's latency from launch to completion. The throughput job multiplies 8192x8192 bf16
matrices back to back and reports TFLOP/s.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F


def latency_job(seconds: float) -> dict[str, object]:
    batch, heads, kv_heads, dim, context = 8, 32, 8, 128, 32768
    q = torch.randn(batch, heads, 1, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, kv_heads, context, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    for _ in range(10):
        F.scaled_dot_product_attention(q, k, v)
    torch.cuda.synchronize()
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        latencies.append(time.perf_counter() - start)
        time.sleep(0.002)
    return {"latencies": latencies}


def throughput_job(seconds: float) -> dict[str, object]:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        count += 10
    elapsed = time.perf_counter() - start
    return {"tflops": 2 * n**3 * count / elapsed / 1e12}


if __name__ == "__main__":
    role, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    result = latency_job(seconds) if role == "ls" else throughput_job(seconds)
    with open(out, "w") as f:
        json.dump(result, f)
