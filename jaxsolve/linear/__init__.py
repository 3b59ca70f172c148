"""jaxsolve.linear (being built)."""
