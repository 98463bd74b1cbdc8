"""Upper bounds on what one request may ask for, so that a slip (`epochs: 100000`, a count
with three zeros too many, a 50,000-pixel image size) cannot hold a GPU for weeks by accident.

These are deployment policy, not validity: the config modules say what is meaningful, these
say what this deployment is willing to run. Each bound comes from the environment of the
process that enforces it (SYNTHAUG_MAX_EPOCHS, ...), so an operator raises it without a code
change. Settings are recognised by name wherever they sit in a request (top level, inside a
config message, inside repeated sources), because the proto field names equal the config
dataclasses' field names (the config contract).

The gRPC runtime checks every Submit* request on arrival (services/common/runtime.py), so
every service enforces them without code of its own; `check_config` lets a plan be checked
before anything is submitted.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from google.protobuf.message import Message

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class RequestLimits:
    """The largest value each kind of setting may have in one request."""

    #: Training epochs (segmenter epochs; GAN n_epochs and n_epochs_decay, each).
    max_epochs: int = 1000
    #: Optimiser steps, where a request counts them instead of epochs.
    max_iterations: int = 10_000_000
    #: Images per batch.
    max_batch_size: int = 256
    #: Images one request makes, takes or renders (compose/generate counts, training
    #: source counts, samples, overlays).
    max_images: int = 1_000_000
    #: Pixels per side of any image a request asks to be produced or trained at.
    max_image_size: int = 8192

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RequestLimits:
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV[f.name], "")
            if raw == "":
                continue
            try:
                value = int(raw)
            except ValueError:
                raise InvalidArgument(f"{ENV[f.name]}={raw!r} is not a whole number") from None
            if value < 1:
                raise InvalidArgument(f"{ENV[f.name]}={raw!r} must be ≥ 1")
            values[f.name] = value
        return cls(**values)

    def check(self, name: str, value: int | float, where: str) -> None:
        """InvalidArgument naming `where` when setting `name` is over its bound; settings no
        bound applies to pass."""
        limit = BOUNDED_SETTINGS.get(name)
        if limit is None or value is None or isinstance(value, bool):
            return
        bound = getattr(self, limit)
        if value > bound:
            raise InvalidArgument(f"{where} = {value} is over this deployment's limit of {bound} "
                                  f"({ENV[limit]}; raise it there if this is intended)")

    def check_request(self, request: Message, where: str | None = None) -> None:
        """Every bounded setting anywhere in a request message."""
        for path, name, value in _message_values(request, where or type(request).__name__):
            self.check(name, value, path)

    def check_config(self, config: Any, where: str) -> None:
        """Every bounded setting of a config dataclass (nested dataclasses included)."""
        for path, name, value in _dataclass_values(config, where):
            self.check(name, value, path)


#: Environment variable of each bound.
ENV = {
    "max_epochs": "SYNTHAUG_MAX_EPOCHS",
    "max_iterations": "SYNTHAUG_MAX_ITERATIONS",
    "max_batch_size": "SYNTHAUG_MAX_BATCH_SIZE",
    "max_images": "SYNTHAUG_MAX_IMAGES",
    "max_image_size": "SYNTHAUG_MAX_IMAGE_SIZE",
}
ENV_VARS = tuple(ENV.values())

#: Setting name (as in the protos and config dataclasses) → the bound that applies to it.
BOUNDED_SETTINGS = {
    "epochs": "max_epochs",
    "n_epochs": "max_epochs",
    "n_epochs_decay": "max_epochs",
    "iterations": "max_iterations",
    "max_iters_per_epoch": "max_iterations",
    "batch_size": "max_batch_size",
    "count": "max_images",
    "max_backgrounds": "max_images",
    "sample_count": "max_images",
    "overlay_images": "max_images",
    "contact_images": "max_images",
    "image_size": "max_image_size",
    "output_size": "max_image_size",
    "crop_size": "max_image_size",
    "min_size": "max_image_size",
    "max_size": "max_image_size",
}


def _message_values(message: Message, where: str) -> Iterator[tuple[str, str, Any]]:
    """(path, field name, value) of every numeric field set in `message`, recursively."""
    for field, value in message.ListFields():
        path = f"{where}.{field.name}"
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue  # maps hold data (metadata, outputs), not settings
            items = value if field.is_repeated else [value]
            for i, item in enumerate(items):
                yield from _message_values(item, f"{path}[{i}]" if field.is_repeated else path)
        elif not field.is_repeated and isinstance(value, (int, float)):
            yield path, field.name, value


def _dataclass_values(obj: Any, where: str) -> Iterator[tuple[str, str, Any]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{where}.{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _dataclass_values(value, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path, f.name, value
