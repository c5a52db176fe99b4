"""The built-in kernels against dense PyTorch SDPA, timed in the same run on one GPU.

    python bench/kernels.py [--only vattention|sla|radial] [--quick] [--hbm-tbps 3.0]

Shapes (from each family's ``bench_cases``): decode at 8K, 32K and 128K context with
Llama-3.1-8B heads (32 query, 8 KV, dim 128), batch 1, 8 and 64; DiT attention at Wan2.1-1.3B
shapes (about 32K tokens, 12 heads, dim 128) for SLA, and Wan 480p at 1x and 4x length for
radial. Each row reports time per call (median of ``triton.testing.do_bench``), the dense
baseline's time, their ratio, and the achieved rate: bandwidth for decode (bytes the sparse
plan reads, and its ratio to the HBM time for those bytes), effective FLOP/s for DiT (dense
attention's FLOPs over the sparse kernel's time).

Without a GPU it says so and measures nothing: CPU times of interpreted Triton say nothing
about the kernels' speed.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Iterator
from typing import Any


def _time_ms(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def decode_rows(quick: bool, hbm_tbps: float) -> Iterator[str]:
    from gpuos.kernels import vattention

    contexts = (8192, 32768) if quick else (8192, 32768, 131072)
    batches = (1, 8) if quick else (1, 8, 64)
    for case in vattention.bench_cases(contexts=contexts, batches=batches):
        run = case.build()
        sparse, dense = _time_ms(run.sparse), _time_ms(run.dense)
        floor_ms = run.sparse_bytes / (hbm_tbps * 1e12) * 1e3
        yield (f"| {case.label} | {sparse:.3f} | {dense:.3f} | {dense / sparse:.2f}x | {run.density:.3f} | "
               f"{run.sparse_bytes / sparse / 1e9:.0f} GB/s | {sparse / floor_ms:.2f} |")
        del run


def dit_rows(family: str) -> Iterator[str]:
    from importlib import import_module

    module = import_module(f"gpuos.kernels.{family}")
    for label, sparse_fn, dense_fn, flops in module.bench_cases("cuda"):
        sparse, dense = _time_ms(sparse_fn), _time_ms(dense_fn)
        yield (f"| {label} | {sparse:.3f} | {dense:.3f} | {dense / sparse:.2f}x | "
               f"{flops / sparse / 1e9:.0f} TFLOP/s (dense-equivalent) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["vattention", "sla", "radial"], action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="fewer decode shapes")
    parser.add_argument("--hbm-tbps", type=float, default=3.0,
                        help="HBM bandwidth for the floor, TB/s (H100 SXM measured about 3.0)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/kernels.py: no GPU here; kernel speed is measured only on a GPU (nothing measured).")
        return 0
    families = args.only or ["vattention", "sla", "radial"]
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, torch {torch.__version__}, Python {platform.python_version()}")
    if "vattention" in families:
        print("\n| decode case | vattention ms | SDPA ms | speed-up | density | achieved | time / HBM floor |")
        print("|---|---|---|---|---|---|---|")
        for row in decode_rows(args.quick, args.hbm_tbps):
            print(row, flush=True)
    for family in ("sla", "radial"):
        if family in families:
            print(f"\n| {family} case | {family} ms | SDPA ms | speed-up | rate |")
            print("|---|---|---|---|---|")
            for row in dit_rows(family):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
