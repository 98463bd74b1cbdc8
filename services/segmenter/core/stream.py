"""The training stream: which training images each optimiser step draws.

Training runs for a fixed number of optimiser steps (an equal budget across arms), not for
a number of passes over a training set whose size differs between arms. The images come
from an endless, deterministic stream: consecutive permutation passes over a pool of
training items, pass ``p`` of pool ``pool`` being ``rng(seed, "segmenter/stream", pool,
p)``. Step ``t`` takes the stream's images ``t·B·W … (t+1)·B·W − 1`` (B images per process,
W processes) and process ``r`` every W-th of them, so every rank takes a disjoint share of
the same stream. Without ``real_fraction`` there is one pool ("all": the mixed training set,
each image equally likely, i.e. in the arm's proportions); with it, two ("real" and
"synthetic") and step ``t`` takes ⌊(t+1)·f·B·W⌋ − ⌊t·f·B·W⌋ real images, so that the real
share of every prefix of the run is f up to one image.

Everything is a pure function of the step: a resumed run continues with exactly the images
an uninterrupted run would have drawn, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np

from services.common.errors import InvalidArgument
from services.common.seeding import rng
from services.segmenter.core.data import Draw

ALL, REAL, SYNTHETIC = "all", "real", "synthetic"


class TrainingStream:
    """The stream of (training item, draw number) pairs, step by step (module docstring)."""

    def __init__(self, is_real: Sequence[bool], seed: int, batch_size: int, world_size: int = 1,
                 real_fraction: float | None = None):
        if not is_real:
            raise InvalidArgument("the training set is empty")
        self.seed = seed
        self.world_size = world_size
        #: Images per step over all processes.
        self.step_images = batch_size * world_size
        self.real_fraction = real_fraction
        if real_fraction is None:
            self.pools = {ALL: list(range(len(is_real)))}
        else:
            self.pools = {REAL: [k for k, r in enumerate(is_real) if r],
                          SYNTHETIC: [k for k, r in enumerate(is_real) if not r]}
            if real_fraction > 0 and not self.pools[REAL]:
                raise InvalidArgument(f"SegmenterConfig.real_fraction = {real_fraction} but the training set has no "
                                      "real images (no source of dataset kind 'real')")
            if real_fraction < 1 and not self.pools[SYNTHETIC]:
                raise InvalidArgument(f"SegmenterConfig.real_fraction = {real_fraction} but the training set has no "
                                      "synthetic images; leave real_fraction unset for a real-only training set")
            # The decimal as written (0.3 is 3/10, not the binary float just below it), in exact
            # arithmetic: the counts are the same on every machine.
            self._fraction = Fraction(repr(float(real_fraction)))
        self._permutations: dict[tuple[str, int], list[int]] = {}

    def real_draws_before(self, step: int) -> int:
        """Real images among the draws of steps 0 … step − 1 (with real_fraction)."""
        return math.floor(self._fraction * self.step_images * step)

    def draws(self, step: int) -> list[Draw]:
        """The images of ``step`` over all processes, in slot order (real ones first)."""
        first = step * self.step_images
        if self.real_fraction is None:
            items = [self._item(ALL, first + k) for k in range(self.step_images)]
        else:
            real_from, real_to = self.real_draws_before(step), self.real_draws_before(step + 1)
            synthetic_from = first - real_from
            items = [self._item(REAL, real_from + k) for k in range(real_to - real_from)]
            items += [self._item(SYNTHETIC, synthetic_from + k) for k in range(self.step_images - len(items))]
        return [(item, first + k) for k, item in enumerate(items)]

    def rank_draws(self, step: int, rank: int) -> list[Draw]:
        """Process ``rank``'s share of ``step``: every world-th image of the step."""
        return self.draws(step)[rank::self.world_size]

    def _item(self, pool: str, position: int) -> int:
        members = self.pools[pool]
        n_pass, k = divmod(position, len(members))
        return members[self._permutation(pool, n_pass)[k]]

    def _permutation(self, pool: str, n_pass: int) -> list[int]:
        key = (pool, n_pass)
        if key not in self._permutations:
            if len(self._permutations) > 8:  # a run moves forward: keep only recent passes
                self._permutations.pop(min(self._permutations, key=lambda k: k[1]))
            n = len(self.pools[pool])
            self._permutations[key] = rng(self.seed, "segmenter/stream", pool, n_pass).permutation(n).tolist()
        return self._permutations[key]


def draws_digest(draws: Iterable[Draw]) -> str:
    """A short digest of a sequence of draws (what one process trained on, in order): the
    training record keeps it per rank, so that the shares of a data-parallel run can be
    checked against the stream (``rank_draws``) without storing every draw."""
    h = hashlib.sha256()
    for item, number in draws:
        h.update(f"{item}:{number};".encode())
    return h.hexdigest()[:16]


def draws_by_source(stream: TrainingStream, items: Sequence[tuple[int, int]], n_sources: int,
                    start: int, stop: int) -> np.ndarray:
    """Images each source contributes to steps ``start`` … ``stop`` − 1, over all processes."""
    counts = np.zeros(n_sources, dtype=np.int64)
    for step in range(start, stop):
        for item, _ in stream.draws(step):
            counts[items[item][0]] += 1
    return counts
