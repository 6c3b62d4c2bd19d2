"""Scaling studies. ``scaling.fit``: the parametric law L(N, D) = E + A / N^alpha + B / D^beta with bootstrap
intervals; ``scaling.isoflop``: IsoFLOP parabolas and compute-optimal power laws (both numpy only). Nothing is
imported here."""
