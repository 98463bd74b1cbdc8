"""Where the orchestrator finds the services: flags or environment, nothing at import time.

Each service address is a comma-separated list of `host:port` replicas, or a DNS name
(`segmenter-headless.synthaug.svc:50053`) that is resolved again before every dispatch, so
that `kubectl scale deploy/segmenter --replicas=N` is picked up without a restart. With no
address at all the orchestrator runs embedded: it starts the four services itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from services.common.errors import InvalidArgument
from services.common.security import CLIENT_ENV_VARS

SERVICES = ("compositor", "gan", "segmenter", "evaluator")

#: Environment variable holding each service's address(es).
ADDRESS_ENV = {name: f"SYNTHAUG_{name.upper()}_ADDR" for name in SERVICES}

#: Every environment variable the orchestrator reads besides the runtime's (deploy tests use
#: this): where the services are, and how to reach them securely (it is their client).
ENV_VARS = (
    *ADDRESS_ENV.values(),
    "SYNTHAUG_STORE",
    "SYNTHAUG_MAX_PARALLEL_STEPS",
    "SYNTHAUG_KEEP_FINISHED_RUNS",
    "SYNTHAUG_KEEP_FINISHED_RUNS_SECONDS",
    *CLIENT_ENV_VARS,
)


@dataclass
class ServiceAddresses:
    """Replica addresses per service; empty lists mean "start it embedded"."""

    addresses: dict[str, list[str]] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return not any(self.addresses.get(s) for s in SERVICES)

    def missing(self) -> list[str]:
        return [s for s in SERVICES if not self.addresses.get(s)]


def parse_addresses(spec: str | None, env: Mapping[str, str] | None = None) -> ServiceAddresses:
    """From `--services compositor=h:p,gan=h:p;...` (`;`-separated services), else the environment."""
    env = os.environ if env is None else env
    out: dict[str, list[str]] = {s: [] for s in SERVICES}
    if spec:
        for part in spec.replace(";", " ").split():
            name, _, value = part.partition("=")
            if name not in SERVICES or not value:
                raise InvalidArgument(f"--services entry {part!r}: expected NAME=HOST:PORT[,HOST:PORT] with NAME in {SERVICES}")
            out[name] = [a for a in value.split(",") if a]
    else:
        for name, var in ADDRESS_ENV.items():
            out[name] = [a.strip() for a in env.get(var, "").split(",") if a.strip()]
    return ServiceAddresses(out)
