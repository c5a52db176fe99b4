"""The offline search engine: genetic programming over a policy's expressions, and tuning of a
policy's numeric constants. Needs no model; seeded and reproducible.

A genome is a policy with two expression trees over what the daemon knows at a moment:

- ``order``: a job's rank (lower goes first) from its request size, age, attained service,
  user estimate, estimated remaining time, latency class, priority and preemptions, and two
  derived terms that hand-made rules use: estimated GPU-seconds (size x estimate) and remaining
  GPU-seconds (size x remaining);
- ``place`` (optional): an option's score (higher is better) from the job's size, the node's free
  GPUs after placement, the chosen GPU's leftover share, idle GPUs left, the node's size and
  whether the GPU is already shared; none means first fit;

- ``share`` (optional): how a fraction that pinned no mode shares a GPU (``Policy.share``), from
  the job's size, memory share, class and estimate and the GPU's state (idle, its mode, its jobs,
  whether it has MIG): above 1 a MIG slice, above 0 a time-slice turn, else MPS; none means MPS;

plus whether it preempts (a waiting job may preempt running ones whose rank exceeds
``scale`` x its own plus ``margin``; SRTF's "twice as much left" is scale 2), its round period
and its time-slice quantum (a constant in [``QUANTUM_MIN``, ``QUANTUM_MAX``] seconds). :func:`render` turns a genome into a readable Python
policy file; the engine evaluates exactly that source (loaded with the sandbox's restrictions),
so what is shipped is what was scored.

Tuning (:class:`ParamSpace`, :func:`render_tuned`) searches a human policy's constants (e.g.
Tiresias's queue thresholds) with the same loop; a genome is then a dict of values.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

JOB_FEATURES = ("size", "age", "service", "estimate", "remaining", "latency", "priority", "preempted",
                "gpu_seconds", "work")
PLACE_FEATURES = ("size", "node_free", "gpu_left", "node_idle", "node_gpus", "shared")
SHARE_FEATURES = ("size", "memory", "latency", "estimate", "gpu_free", "gpu_jobs", "gpu_idle", "gpu_mig",
                  "gpu_mps", "gpu_turns", "has_mig")
# The share expression's bands: above the first a MIG slice, above the second a turn, else MPS.
SHARE_MIG_ABOVE = 1.0
SHARE_TURNS_ABOVE = 0.0
QUANTUM_MIN, QUANTUM_MAX = 0.1, 60.0
QUANTA = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
BINARY = ("add", "sub", "mul", "div", "min", "max")
UNARY = ("neg", "log", "sqrt")
MAX_DEPTH = 6
PERIODS = (0.0, 60.0, 300.0)
SCALES = (1.0, 1.5, 2.0, 4.0)

# A tree: a float constant, a feature name, or (operator, child, ...).
Tree = float | str | tuple[Any, ...]


def size(tree: Tree) -> int:
    return 1 + sum(size(c) for c in tree[1:]) if isinstance(tree, tuple) else 1


def depth(tree: Tree) -> int:
    return 1 + max(depth(c) for c in tree[1:]) if isinstance(tree, tuple) else 1


def render_expr(tree: Tree) -> str:
    """Plain Python for ``tree`` (``pdiv``, ``plog`` and ``psqrt`` are defined in the file)."""
    if isinstance(tree, float):
        return repr(round(tree, 4))
    if isinstance(tree, str):
        return tree
    op, *args = tree
    infix = {"add": "+", "sub": "-", "mul": "*"}
    if op in infix or op == "neg":
        a = [render_expr(x) for x in args]
    else:  # a call's arguments need no parentheses of their own
        a = [render_top(x) for x in args]
    if op in infix:
        return f"({a[0]} {infix[op]} {a[1]})"
    if op == "div":
        return f"pdiv({a[0]}, {a[1]})"
    if op in ("min", "max"):
        return f"{op}({a[0]}, {a[1]})"
    if op == "neg":
        return f"(-{a[0]})"
    return f"p{op}({a[0]})"


def render_top(tree: Tree) -> str:
    """``render_expr`` without the outermost parentheses."""
    text = render_expr(tree)
    return text[1:-1] if isinstance(tree, tuple) and tree[0] in ("add", "sub", "mul", "neg") else text


def random_tree(rng: random.Random, features: Sequence[str], max_depth: int, full: bool = False) -> Tree:
    if max_depth <= 1 or (not full and rng.random() < 0.3):
        return rng.choice(features) if rng.random() < 0.75 else round(rng.uniform(-2.0, 10.0), 2)
    if rng.random() < 0.2:
        return (rng.choice(UNARY), random_tree(rng, features, max_depth - 1, full))
    return (rng.choice(BINARY), random_tree(rng, features, max_depth - 1, full),
            random_tree(rng, features, max_depth - 1, full))


def _paths(tree: Tree, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [path]
    if isinstance(tree, tuple):
        for i, child in enumerate(tree[1:], start=1):
            out.extend(_paths(child, (*path, i)))
    return out


def _get(tree: Tree, path: tuple[int, ...]) -> Tree:
    for i in path:
        assert isinstance(tree, tuple)
        tree = tree[i]
    return tree


def _put(tree: Tree, path: tuple[int, ...], sub: Tree) -> Tree:
    if not path:
        return sub
    assert isinstance(tree, tuple)
    items = list(tree)
    items[path[0]] = _put(items[path[0]], path[1:], sub)
    return tuple(items)


def mutate_tree(tree: Tree, rng: random.Random, features: Sequence[str]) -> Tree:
    """Replace a random subtree, nudge a constant, or swap an operator."""
    path = rng.choice(_paths(tree))
    node = _get(tree, path)
    roll = rng.random()
    if isinstance(node, float) and roll < 0.5:
        new: Tree = round(node * math.exp(rng.gauss(0.0, 0.5)) + rng.gauss(0.0, 0.2), 4)
    elif isinstance(node, tuple) and roll < 0.3:
        ops = UNARY if len(node) == 2 else BINARY
        new = (rng.choice(ops), *node[1:])
    else:
        new = random_tree(rng, features, 3)
    out = _put(tree, path, new)
    return out if depth(out) <= MAX_DEPTH else tree


def crossover_tree(a: Tree, b: Tree, rng: random.Random) -> Tree:
    """``a`` with a random subtree replaced by a random subtree of ``b``."""
    out = _put(a, rng.choice(_paths(a)), _get(b, rng.choice(_paths(b))))
    return out if depth(out) <= MAX_DEPTH else a


@dataclass(frozen=True)
class Genome:
    order: Tree
    place: Tree | None = None
    preempt: bool = False
    margin: float = 1.0
    period: float = 0.0
    scale: float = 1.0
    share: Tree | None = None
    quantum: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"order": _tree_json(self.order), "place": None if self.place is None else _tree_json(self.place),
                "preempt": self.preempt, "margin": self.margin, "period": self.period, "scale": self.scale,
                "share": None if self.share is None else _tree_json(self.share), "quantum": self.quantum}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Genome:
        """A genome from :meth:`to_json`; one saved before a field existed gets its default."""
        place, share = data.get("place"), data.get("share")
        return cls(_tree_from(data["order"]), None if place is None else _tree_from(place), bool(data["preempt"]),
                   float(data["margin"]), float(data["period"]), float(data.get("scale", 1.0)),
                   None if share is None else _tree_from(share), float(data.get("quantum", 1.0)))

    def but(self, **changes: Any) -> Genome:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return replace(self, **changes)


def _tree_json(tree: Tree) -> Any:
    return [tree[0], *(_tree_json(c) for c in tree[1:])] if isinstance(tree, tuple) else tree


def _tree_from(data: Any) -> Tree:
    if isinstance(data, list):
        return (data[0], *(_tree_from(c) for c in data[1:]))
    return float(data) if isinstance(data, (int, float)) else str(data)


# A fraction goes to a MIG slice where the GPU has MIG and holds no other mode (idle or already
# sliced), else it is an MPS client: a slice isolates it from its neighbours' interference.
MIG_WHERE_FREE: Tree = ("mul", 2.0, ("mul", "has_mig", ("max", "gpu_idle", "gpu_mig")))
# A latency-class job ranks this far ahead of any other (more than any remaining time in a trace).
LATENCY_FIRST = 1e6
# Hand-made starting points, so the search starts where people already are (the header of an
# emitted file says so): FIFO, SJF, SRTF (as the srtf policy: preempt a job with twice as much
# left), LAS, smallest GPU-seconds first, best-fit and spread placement, and the strict-priority
# family (latency class first, preempting the rest) with arrival or remaining-time order inside.
SEEDS: tuple[Genome, ...] = (
    Genome(("neg", "age")),
    Genome("estimate"),
    Genome("remaining", preempt=True, margin=600.0),
    Genome("service", period=60.0),
    Genome(("mul", "size", "estimate")),
    Genome(("sub", "estimate", "age"), place=("neg", "node_free")),
    Genome(("neg", "age"), place=("neg", "node_free")),
    Genome(("sub", ("mul", "size", "remaining"), ("mul", 1000.0, "latency"))),
    Genome("remaining", preempt=True, margin=0.0, scale=2.0),
    Genome("work", preempt=True, margin=0.0, scale=2.0),
    Genome(("sub", ("neg", "age"), ("mul", LATENCY_FIRST, "latency")), preempt=True, margin=LATENCY_FIRST / 2),
    Genome(("sub", "remaining", ("mul", LATENCY_FIRST, "latency")), preempt=True, margin=LATENCY_FIRST / 2),
    Genome(("sub", "remaining", ("mul", LATENCY_FIRST, "latency")), place="node_free", preempt=True,
           margin=LATENCY_FIRST / 2),
    Genome("remaining", place="node_free", preempt=True, margin=0.0, scale=2.0),
    # The sharing choice, beside today's default (every seed above: MPS, 1 s quanta).
    Genome(("neg", "age"), share=MIG_WHERE_FREE),
    Genome("remaining", place=("neg", "node_free"), preempt=True, margin=0.0, scale=2.0, share=MIG_WHERE_FREE),
)


def random_genome(rng: random.Random) -> Genome:
    return Genome(
        random_tree(rng, JOB_FEATURES, rng.randint(2, 4), full=rng.random() < 0.5),
        random_tree(rng, PLACE_FEATURES, rng.randint(1, 3)) if rng.random() < 0.4 else None,
        rng.random() < 0.25,
        round(math.exp(rng.uniform(0.0, 8.0)), 2),
        rng.choice(PERIODS),
        share=random_tree(rng, SHARE_FEATURES, rng.randint(1, 3)) if rng.random() < 0.3 else None,
        quantum=rng.choice(QUANTA),
    )


def _mutate_optional(tree: Tree | None, rng: random.Random, features: Sequence[str]) -> Tree | None:
    """Grow a missing tree, drop one now and then (back to the default), or mutate it."""
    if tree is None:
        return random_tree(rng, features, 2)
    return None if rng.random() < 0.15 else mutate_tree(tree, rng, features)


def _mutate_quantum(quantum: float, rng: random.Random) -> float:
    return round(min(QUANTUM_MAX, max(QUANTUM_MIN, quantum * math.exp(rng.gauss(0.0, 0.7)))), 3)


def mutate(g: Genome, rng: random.Random) -> Genome:
    roll = rng.random()
    if roll < 0.5:
        return g.but(order=mutate_tree(g.order, rng, JOB_FEATURES))
    if roll < 0.67:
        return g.but(place=_mutate_optional(g.place, rng, PLACE_FEATURES))
    if roll < 0.78:
        return g.but(share=_mutate_optional(g.share, rng, SHARE_FEATURES))
    if roll < 0.86:
        return g.but(preempt=not g.preempt)
    if roll < 0.90:
        return g.but(margin=round(g.margin * math.exp(rng.gauss(0.0, 1.0)), 3))
    if roll < 0.94:
        return g.but(scale=rng.choice(SCALES))
    if roll < 0.97:
        return g.but(quantum=_mutate_quantum(g.quantum, rng))
    return g.but(period=rng.choice(PERIODS))


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    """GEPA's merge in tree form: ``a``'s genome with parts of ``b`` (its placement, its sharing
    choice and quantum, or a subtree of its order)."""
    roll = rng.random()
    if roll < 0.2:
        return a.but(place=b.place)
    if roll < 0.35:
        return a.but(share=b.share, quantum=b.quantum)
    return a.but(order=crossover_tree(a.order, b.order, rng))


# -- rendering ----------------------------------------------------------------------------------

_HELPERS = {
    "pdiv": ('def pdiv(a: float, b: float) -> float:\n    """Protected division: a / b, or a when b is about 0."""\n'
             "    return a / b if abs(b) > 1e-9 else a\n"),
    "plog": "def plog(a: float) -> float:\n    return math.log1p(abs(a))\n",
    "psqrt": "def psqrt(a: float) -> float:\n    return math.sqrt(abs(a))\n",
}
# How each feature is computed, in dependency order.
_JOB_CODE = {
    "size": "job.request.compute_milli / 1000",
    "age": "now - job.submitted_at",
    "service": "job.attained(now)",
    "estimate": "job.estimated_seconds",
    "remaining": "max(0.0, estimate - service / max(size, 0.001))",
    "latency": '1.0 if job.qos in ("LS", "Guaranteed") else 0.0',
    "priority": "float(job.priority)",
    "preempted": "float(job.preemptions)",
    "gpu_seconds": "size * estimate",
    "work": "size * remaining",
}
_PLACE_CODE = {
    "size": "job.request.compute_milli / 1000",
    "take": "(job.request.gpu_milli or 1000) / 1000",
    "node_free": "sum(g.milli_free for g in node.gpus if g.healthy) / 1000 - take * len(gpus)",
    "gpu_left": "min((g.milli_free / 1000 - take for g in gpus), default=0.0)",
    "node_idle": "sum(1 for g in node.gpus if g.idle) - sum(1 for g in gpus if g.idle)",
    "node_gpus": "float(len(node.gpus))",
    "shared": "1.0 if any(g.jobs for g in gpus) else 0.0",
}
_SHARE_CODE = {
    "size": "job.request.compute_milli / 1000",
    "memory": "job.request.memory_bytes / gpu.memory_total if job.request.memory_bytes else size",
    "latency": '1.0 if job.qos in ("LS", "Guaranteed") else 0.0',
    "estimate": "job.estimated_seconds",
    "gpu_free": "gpu.milli_free / 1000",
    "gpu_jobs": "float(len(gpu.jobs))",
    "gpu_idle": "1.0 if gpu.idle else 0.0",
    "gpu_mig": '1.0 if gpu.sharing == "mig" else 0.0',
    "gpu_mps": '1.0 if gpu.sharing == "mps" else 0.0',
    "gpu_turns": '1.0 if gpu.sharing == "timeslice" else 0.0',
    "has_mig": "1.0 if gpu.mig_profiles else 0.0",
}
_NEEDS = {"memory": ("size",), "remaining": ("estimate", "service", "size"), "gpu_seconds": ("size", "estimate"),
          "work": ("size", "remaining"), "node_free": ("take",), "gpu_left": ("take",)}


def _names(tree: Tree) -> set[str]:
    if isinstance(tree, tuple):
        return {tree[0]}.union(*(_names(c) for c in tree[1:]))
    return {tree} if isinstance(tree, str) else set()


def _feature_lines(tree: Tree, code: dict[str, str]) -> list[str]:
    used = _names(tree) & code.keys()
    pending = list(used)
    while pending:
        for need in _NEEDS.get(pending.pop(), ()):
            if need not in used:
                used.add(need)
                pending.append(need)
    return [f"        {name} = {expr}" for name, expr in code.items() if name in used]


def _threshold(g: Genome) -> str:
    mine = "mine" if g.scale == 1.0 else f"{g.scale!r} * mine"
    return f"{mine} + {g.margin!r}" if g.margin else mine


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("_", "-").split("-") if part)


def render(g: Genome, name: str, header: str = "", register: bool = False) -> str:
    """A readable policy file for ``g`` named ``name`` (with ``@register`` for shipping)."""
    ops = _names(g.order) | set().union(*(_names(t) for t in (g.place, g.share) if t is not None))
    helpers = [_HELPERS[h] for h in ("pdiv", "plog", "psqrt") if h[1:] in ops]
    lines = [f'"""{header.strip()}\n"""' if header else '"""An evolved policy (gpuos.agents.gp)."""', ""]
    lines += ["from __future__ import annotations", ""]
    if ops & {"log", "sqrt"}:
        lines.append("import math")
    lines += ["from collections.abc import Sequence", ""]
    imports = ["JobView", "Policy", "Snapshot"]
    if g.place is not None:
        imports += ["NodeView"]
    if g.place is not None or g.share is not None:
        imports += ["GpuView"]
    if g.share is not None:
        imports += ["Share"]
    if register:
        imports.append("register")
    lines.append(f"from gpuos.scheduler import {', '.join(sorted(imports))}")
    if g.preempt:
        lines.append("from gpuos.scheduler.preemption import victims_to_fit")
    for helper in helpers:
        lines += ["", "", helper.rstrip()]
    lines += ["", ""]
    if register:
        lines.append("@register")
    lines += [
        f"class {_class_name(name)}(Policy):",
        f'    name = "{name}"',
        '    description = "evolved by gpuos.agents.gp; see the header"',
        f"    first_fit = {g.place is None}",
        f"    period = {g.period!r}",
        "",
        "    def rank(self, job: JobView, now: float) -> float:",
        '        """Lower runs first."""',
        *_feature_lines(g.order, _JOB_CODE),
        f"        return {render_top(g.order)}",
        "",
        "    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:",
        "        return sorted(pending, key=lambda j: (self.rank(j, snap.now), j.submitted_at, j.id))",
    ]
    if g.place is not None:
        lines += [
            "",
            "    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:",
            *_feature_lines(g.place, _PLACE_CODE),
            f"        return {render_top(g.place)}",
        ]
    if g.preempt:
        lines += [
            "",
            "    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:",
            "        mine = self.rank(job, snap.now)",
            "        return victims_to_fit(",
            "            job,",
            "            snap,",
            f"            eligible=lambda r: self.rank(r, snap.now) > {_threshold(g)},",
            "            preference=lambda r: -self.rank(r, snap.now),",
            "        )",
        ]
    if g.share is not None:
        lines += [
            "",
            "    def share(self, job: JobView, gpu: GpuView, snap: Snapshot) -> Share:",
            f'        """A MIG slice where the rule exceeds {SHARE_MIG_ABOVE!r}, a time-slice turn where it exceeds'
            f' {SHARE_TURNS_ABOVE!r}, else MPS."""',
            *_feature_lines(g.share, _SHARE_CODE),
            f"        rule = {render_top(g.share)}",
            f"        if rule > {SHARE_MIG_ABOVE!r}:",
            "            return Share.MIG",
            f"        if rule > {SHARE_TURNS_ABOVE!r}:",
            "            return Share.TIMESLICE",
            "        return Share.MPS",
        ]
    if g.quantum != 1.0:
        lines += [
            "",
            "    def quantum(self, job: JobView, snap: Snapshot) -> float:",
            f"        return {g.quantum!r}",
        ]
    return "\n".join(lines) + "\n"


# -- numeric tuning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One constant: ``attr`` (or element ``index`` of a tuple attribute), searched in [low, high]."""

    attr: str
    low: float
    high: float
    index: int = -1
    log: bool = True

    @property
    def label(self) -> str:
        return f"{self.attr}[{self.index}]" if self.index >= 0 else self.attr


@dataclass(frozen=True)
class ParamSpace:
    module: str  # e.g. gpuos.scheduler.policies.tiresias
    cls: str  # e.g. Tiresias
    params: tuple[Param, ...]
    sorted_tuples: bool = True  # keep tuple attributes ascending (queue thresholds)
    defaults: dict[str, float] = field(default_factory=dict)

    def sample(self, rng: random.Random) -> dict[str, float]:
        return {p.label: _draw(p, rng) for p in self.params}

    def mutate(self, values: dict[str, float], rng: random.Random, scale: float = 0.4) -> dict[str, float]:
        out = dict(values)
        for p in rng.sample(list(self.params), rng.randint(1, len(self.params))):
            v = out[p.label]
            v = v * math.exp(rng.gauss(0.0, scale)) if p.log else v + rng.gauss(0.0, scale * (p.high - p.low))
            out[p.label] = round(min(p.high, max(p.low, v)), 3)
        return out


def _draw(p: Param, rng: random.Random) -> float:
    if p.log:
        return round(math.exp(rng.uniform(math.log(p.low), math.log(p.high))), 3)
    return round(rng.uniform(p.low, p.high), 3)


TIRESIAS_SPACE = ParamSpace(
    "gpuos.scheduler.policies.tiresias", "Tiresias",
    (Param("thresholds", 60.0, 200_000.0, 0), Param("thresholds", 600.0, 2_000_000.0, 1),
     Param("promote_knob", 0.5, 64.0), Param("period", 10.0, 600.0)),
    defaults={"thresholds[0]": 3250.0, "thresholds[1]": 7200.0, "promote_knob": 8.0, "period": 60.0},
)
SPACES = {"tiresias": TIRESIAS_SPACE}


def render_tuned(space: ParamSpace, values: dict[str, float], name: str, header: str = "",
                 register: bool = False) -> str:
    """A policy file: a subclass of ``space.cls`` with the tuned constants."""
    attrs: dict[str, Any] = {}
    for p in space.params:
        if p.index >= 0:
            attrs.setdefault(p.attr, {})[p.index] = values[p.label]
        else:
            attrs[p.attr] = values[p.label]
    lines = [f'"""{header.strip()}\n"""' if header else '"""A tuned policy (gpuos.agents.gp)."""', ""]
    lines += ["from __future__ import annotations", ""]
    if register:
        lines.append("from gpuos.scheduler import register")
    lines += [f"from {space.module} import {space.cls}", "", ""]
    if register:
        lines.append("@register")
    lines += [f"class {_class_name(name)}({space.cls}):", f'    name = "{name}"',
              '    description = "constants tuned by gpuos.agents.gp; see the header"']
    for attr, value in attrs.items():
        if isinstance(value, dict):
            items = [value[i] for i in sorted(value)]
            if space.sorted_tuples:
                items.sort()
            lines.append(f"    {attr} = ({', '.join(repr(float(v)) for v in items)},)")
        else:
            lines.append(f"    {attr} = {float(value)!r}")
    return "\n".join(lines) + "\n"
