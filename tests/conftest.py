"""Suite-wide settings: a persistent XLA compilation cache shared by the test workers.

Many tests compile the same computations (every training run compiles the same NIN step);
with the cache, each distinct program is compiled once per suite run, also in the subprocesses
the tests start (they inherit the environment variables set here). It changes no result.
"""

import os
import tempfile

import jax

_CACHE = os.path.join(tempfile.gettempdir(), f"gapjax-test-xla-cache-{os.getuid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
