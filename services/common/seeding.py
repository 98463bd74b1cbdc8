"""The one seed derivation: every random choice derives from (seed, purpose, index…).

A seed is never masked, added to or reused across purposes: each random stream gets its own
63-bit seed, the first 8 bytes (big-endian, top bit dropped) of the SHA-256 of the canonical
JSON of its parts (``[seed, "purpose", index, …]``, services.common.store.canonical_json).
The same parts give the same stream on every machine, in every process and for any number
of workers; different parts give independent streams. The encoding equals the one the
orchestrator's step seeds have always used (``orchestrator/graph.py`` ``derive_seed(base,
*parts)``), so moving it here changes none of them.

Streams derived with it (the parts; keep this list in step with the code):

===========================================  ================================================
parts                                        stream
===========================================  ================================================
(order_seed, "nested-order", dataset, split) services.common.sampling.nested_order: the
                                             nested order of a dataset split's images (arms
                                             and synthetic sources take prefixes of it)
(seed, "segmenter/init")                     segmenter: torch seed of weight initialisation
                                             and of Mask R-CNN's proposal sampling
(seed, "segmenter/stream", pool, pass)       segmenter: permutation ``pass`` of a training
                                             pool ("all", or "real" / "synthetic" with
                                             real_fraction) — services/segmenter/core/stream.py
(seed, "segmenter/augment", draw)            segmenter: augmentation of the ``draw``-th image
                                             of the training stream
(data_seed, "training-order")                orchestrator: the order seed of every training
                                             source of every arm and seed (one real prefix)
(data_seed, "backgrounds" | "composite" |    orchestrator step seeds (orchestrator/graph.py)
 "gan-masks" | "gan"), (gan seed,
 "generate"), (seed, "bootstrap")
(seed, "gan/init"), (seed, "gan/flip",       GAN: weight initialisation, flips of pair i in
 epoch, i), (seed, "gan/grid" | "gan/torch"  an epoch, sample grids, dropout, shuffling,
 | "gan/shuffle", epoch), (seed,             generation of a batch
 "gan/generate", first_index)
(seed, "compositor/image", index)            compositor: every choice for composite ``index``
                                             (and background harvesting per source image)
(seed, "compositor/background-pick",         compositor: which source images (or harvested
 "images" | "backgrounds")                   backgrounds) a max_backgrounds cap keeps
(seed, "demo/image", index)                  procedural demo data: image ``index``
(seed, "report/contact-sheet", label)        report: images drawn for the contact sheet
===========================================  ================================================

"""
from __future__ import annotations

import hashlib
from numbers import Integral

import numpy as np

from services.common.store import canonical_json

#: Seeds are non-negative and fit a signed 64-bit integer (torch.manual_seed, protobuf int64).
SEED_BITS = 63


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed for the stream named by ``parts`` (integers and strings only, so that
    the encoding is canonical: ``1`` and ``"1"`` are different streams, ``True`` is refused)."""
    if not parts:
        raise TypeError("derive_seed needs at least one part")
    canonical: list[int | str] = []
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (Integral, str)):
            raise TypeError(f"seed parts must be integers or strings, got {type(p).__name__} {p!r}")
        canonical.append(p if isinstance(p, str) else int(p))
    digest = hashlib.sha256(canonical_json(canonical)).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def rng(*parts: int | str) -> np.random.Generator:
    """NumPy's default generator (PCG64) on the stream ``derive_seed(*parts)``."""
    return np.random.default_rng(derive_seed(*parts))
