"""jaxsolve.bilevel (being built)."""
