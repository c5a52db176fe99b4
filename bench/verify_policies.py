"""Judge policy files by the held-out protocol, all under one secret, and print the verdicts.

    python bench/verify_policies.py --objective mean_jct runs/v3/gp-mean_jct-s1/best.py ... \
        [--traces held-out] [--out DIR] [--jobs 2] [--no-robustness]

The baselines (every hand-made policy, the order x placement combinations and the tuned ones)
run once on the masked held-out windows and serve every file, which is what makes judging
several search results affordable; each verdict is what ``gpuosctl evolve --verify`` prints for
that file alone (there with a fresh secret of its own). Also prints the baselines against the
single best one and the clairvoyant ceiling, so a reader sees how much room the objective has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gpuos.agents.ceilings import ceiling
from gpuos.agents.evaluator import Baselines, compute_baselines, geomean, load_trace_cached
from gpuos.agents.masking import Secret
from gpuos.agents.verify import format_verdict, verify
from gpuos.agents.workloads import windows_of


def baseline_lines(base: Baselines, specs: list[str], objective: str, secret: Secret) -> list[str]:
    single, _ = base.single_best(objective)
    ref = {s: base.runs[s][single].metrics[objective] for s in specs}
    rows = []
    for policy in base.runs[specs[0]]:
        ratios = [ref[s] / base.runs[s][policy].metrics[objective] if base.runs[s][policy].metrics[objective] > 0
                  else 1.0 for s in specs]
        rows.append((geomean(ratios) - 1, policy))
    ceil = [ref[s] / ceiling(load_trace_cached(s, secret), objective).metrics[objective] for s in specs]
    per_trace = sorted({base.best(s, objective)[0] for s in specs})
    lines = [f"baselines vs the single best ({single}) on {objective}, geomean over {len(specs)} windows:"]
    lines += [f"  {p:<28} {g:+.1%}" for g, p in sorted(rows, reverse=True)]
    lines.append(f"  clairvoyant ceiling            {geomean(ceil) - 1:+.1%}")
    lines.append(f"  policies best on some window: {', '.join(per_trace)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="policy files to judge")
    p.add_argument("--objective", required=True)
    p.add_argument("--traces", default="held-out", help="held-out (default), training, a spec or a trace file")
    p.add_argument("--out", default="", help="also write each verdict as JSON here")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-robustness", action="store_true")
    args = p.parse_args(argv)
    specs = windows_of(args.traces)
    secret = Secret.fresh()
    started = time.perf_counter()
    base = compute_baselines(specs, args.objective, secret=secret, jobs=args.jobs)
    print(f"# {len(specs)} windows, {len(base.runs[specs[0]])} baselines, {time.perf_counter() - started:.0f} s",
          flush=True)
    print("\n".join(baseline_lines(base, specs, args.objective, secret)), flush=True)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for path in args.files:
        started = time.perf_counter()
        report = verify(Path(path).read_text(), args.objective, specs, filename=path, secret=secret,
                        baselines=base, robustness=not args.no_robustness)
        print(f"\n## {path} ({time.perf_counter() - started:.0f} s)\n{format_verdict(report)}", flush=True)
        if out:
            (out / f"{Path(path).parent.name or Path(path).stem}-{args.objective}.json").write_text(
                json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
