"""Generators by name, as pix2pix's `find_model_using_name` or torchvision's model builders.

The table maps a name to the builder that makes the model, as "module:callable", imported only
when a model is built: the names are known without importing torch, so `GanConfig.validate()`
(and a plan that names a generator) checks them for free. Adding a generator is one module
with a builder satisfying `services.gan.model.Builder` and one line here.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from services.common.errors import InvalidArgument

if TYPE_CHECKING:
    from services.gan.model import Builder

#: name → "module:callable" building a `services.gan.model.GanModel` from (cfg, spec, device).
GENERATORS: dict[str, str] = {
    "pix2pix": "services.gan.pix2pix:Pix2Pix",
}


def model_names() -> tuple[str, ...]:
    return tuple(GENERATORS)


def builder(name: str) -> Builder:
    """The registered builder of `name` (importing its module now)."""
    target = GENERATORS.get(name)
    if target is None:
        raise InvalidArgument(f"unknown generator {name!r}; registered: {', '.join(GENERATORS)}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
