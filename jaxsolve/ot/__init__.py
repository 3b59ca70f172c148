"""jaxsolve.ot (being built)."""
