"""Which source each row of the global batch stream comes from, for a weighted mixture: exact, stateless and
random-access.

Rows are dealt out source by source (``Mixture.assign``): among rows ``0 .. n-1`` source 0 gets
``floor(n·f_0)`` with ``f_0 = w_0``; the rows it does not get are numbered afresh and dealt to source 1 with
``f_1 = w_1 / (w_1 + ... + w_m)``, and so on; the last source takes what is left. So after any ``n`` rows each source
has its weight's share to within one row per source before it, at every prefix of the stream (in particular within
each batch, and after a resume), and row ``r`` and its index inside its source are computed in O(sources) integer
operations from ``r`` alone: no state, nothing to checkpoint beyond the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction


class Mixture:
    def __init__(self, weights: Sequence[float]) -> None:
        if not weights:
            raise ValueError("a mixture needs at least one source")
        exact = [Fraction(w).limit_denominator(10**6) for w in weights]
        if any(w <= 0 for w in exact):
            raise ValueError(f"mixture weights {list(weights)} must all be > 0")
        total = sum(exact)
        self.weights = tuple(float(w / total) for w in exact)
        # f_i = w_i / (w_i + ... + w_m) as (numerator, denominator) integers.
        self._fractions = []
        for i, w in enumerate(exact):
            f = w / sum(exact[i:])
            self._fractions.append((f.numerator, f.denominator))

    def assign(self, row: int) -> tuple[int, int]:
        """(source, index of this row among that source's rows) of global row ``row``."""
        for source, (a, b) in enumerate(self._fractions):
            taken_before, taken_after = row * a // b, (row + 1) * a // b
            if taken_after > taken_before:
                return source, taken_before
            row -= taken_before  # this row's index among the rows left for later sources
        raise AssertionError("the last source takes every remaining row")

    def rows_per_source(self, rows: int) -> list[int]:
        """How many of rows ``0 .. rows-1`` each source gets."""
        counts = []
        for a, b in self._fractions:
            counts.append(rows * a // b)
            rows -= counts[-1]
        return counts
