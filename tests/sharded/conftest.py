"""Tests on a mesh of 8 simulated CPU devices. They run in their own pytest process
(tests/test_sharding.py starts it with XLA_FLAGS=--xla_force_host_platform_device_count=8, which
must be set before JAX starts); in a process with fewer devices they are not collected."""

import jax

collect_ignore_glob = [] if jax.device_count() >= 8 else ["test_*.py"]
