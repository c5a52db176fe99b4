"""Which policy to run: a registered one by name, or a policy file's text, and how it survives restarts.

A policy file (an evolved policy, say) is loaded by the one loader candidate files go through,
:func:`gpuos.agents.sandbox.load_policy_class`: its source is screened, it runs with restricted
builtins, and its ``@register`` registers nothing. The client reads the file and sends its text,
so gpuosd never opens a path a caller names. The text is kept in the store with the choice, so
a restarted gpuosd runs (or returns to) the same policy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from gpuos.errors import InvalidArgument
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import available, get_policy
from gpuos.text import quote

# A policy file larger than this is refused: policies are a few hundred lines.
MAX_SOURCE_BYTES = 1 << 20


@dataclass(frozen=True)
class PolicyChoice:
    """A registered policy (``source`` empty) or a policy file: its text and the name it was read from."""

    name: str
    source: str = ""
    filename: str = ""

    @property
    def from_file(self) -> bool:
        return bool(self.source)

    def load(self) -> Policy:
        """A fresh instance; InvalidArgument("policy") for an unknown name, ("source") for a bad file."""
        if not self.from_file:
            return get_policy(self.name)
        return load_file(self.source, self.filename)[1]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PolicyChoice:
        data = json.loads(text)
        return cls(str(data["name"]), str(data.get("source", "")), str(data.get("filename", "")))


def load_file(source: str, filename: str) -> tuple[PolicyChoice, Policy]:
    """The choice and an instance of the policy file whose text is ``source``.

    InvalidArgument("source") when it is too large, fails the sandbox's checks, raises while
    loading, or takes the name of a registered policy (that name means the registered one)."""
    from gpuos.agents.sandbox import CandidateRejected, load_policy_class

    label = filename or "<policy file>"
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise InvalidArgument("source", f"{quote(label)} is over {MAX_SOURCE_BYTES} bytes")
    try:
        cls = load_policy_class(source, label)
        policy = cls()
    except CandidateRejected as exc:
        raise InvalidArgument("source", f"{quote(label)} was refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a policy file's failure is the caller's input error
        raise InvalidArgument("source", f"{quote(label)} failed to load: {type(exc).__name__}: {exc}") from None
    if not policy.name or policy.name == Policy.name:
        raise InvalidArgument("source", f"{quote(label)}: its policy class sets no name")
    if policy.name in available():
        raise InvalidArgument("source", f"{quote(label)}: its policy is named {quote(policy.name)}, which is a "
                                        "registered policy; give the file's policy another name")
    return PolicyChoice(policy.name, source, filename), policy


def resolve(name: str, source: str, filename: str) -> tuple[PolicyChoice, Policy]:
    """What a request names: a registered policy ``name`` or the policy file ``source`` (one of them)."""
    name = name.strip()
    if name and source:
        raise InvalidArgument("name", "name a registered policy or send a policy file, not both")
    if source:
        return load_file(source, filename)
    if not name:
        raise InvalidArgument("name", "is empty; name a policy (see `gpuosctl policy list`) or a policy file")
    policy = get_policy(name)
    return PolicyChoice(policy.name), policy
