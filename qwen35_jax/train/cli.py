"""Command-line helpers shared by ``experiments.train`` / ``eval`` / ``sweep``.

``run(main)`` is ``absl.app.run`` whose flag parsing turns ml_collections' bare ``AttributeError: 'key'`` for an
unknown ``--config.a.b=v`` override into a message naming the override and the valid keys. It also quiets orbax's
per-save INFO logging and turns on JAX's persistent compilation cache (``$QWEN35_JAX_CACHE``, default
``~/.cache/qwen35_jax/xla``; ``QWEN35_JAX_CACHE=off`` disables it), so a resumed run, an evaluation or a sweep point
with the same shapes skips most compilation (on CPU the eager model initialisation alone compiles ~100 ops).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

import jax
from absl import app, flags
from absl import logging as absl_logging


def _parse(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:
        text = str(error).replace("\\n", " ").replace("\\", "")
        overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
        culprit = next((o for o in overrides if any(f"'{part}" in text for part in o[len("--config."):].split("."))),
                       None)
        key = culprit[len("--config."):] if culprit else "?"
        hint = re.search(r"Did you mean \w+", text)
        sys.stderr.write(f"FATAL Flags parsing error: {culprit or overrides}: config key {key!r} does not exist"
                         f"{' (' + hint.group(0) + '?)' if hint else ''}. Check the spelling against the config file "
                         "(or qwen35_jax/train/config_schema.py DEFAULTS); new keys cannot be added from the command "
                         "line.\n")
        sys.exit(1)
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n")
        sys.exit(1)


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at ``$QWEN35_JAX_CACHE`` (see the module docstring)."""
    path = os.environ.get("QWEN35_JAX_CACHE", os.path.expanduser("~/.cache/qwen35_jax/xla"))
    if path == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _main_with_setup(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    def wrapped(argv: list[str]) -> None:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("qwen35_jax").setLevel(logging.INFO)
        enable_compilation_cache()
        main(argv)

    return wrapped


def run(main: Callable[[list[str]], None]) -> None:
    app.run(_main_with_setup(main), flags_parser=_parse)
