"""Training of the UnSeg noise generator (bilevel optimisation against a surrogate)."""
