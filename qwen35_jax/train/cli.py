"""Command-line helpers shared by every program (``experiments.*``, ``tools.aot_compile`` / ``convert_hf`` /
``param_count``).

``run(main)`` is ``absl.app.run`` whose flag parsing turns ml_collections' bare ``AttributeError: 'key'`` for an
unknown ``--config.a.b=v`` override into a message naming the override and the valid keys. It also quiets orbax's
per-save INFO logging and turns on JAX's persistent compilation cache (``$QWEN35_JAX_CACHE``, default
``~/.cache/qwen35_jax/xla``; ``QWEN35_JAX_CACHE=off`` disables it), so a resumed run, an evaluation or a sweep point
with the same shapes skips most compilation (on CPU the eager model initialisation alone compiles ~100 ops).

Errors: a user error (a bad flag or config value, a missing file or checkpoint, an existing output, a workdir
trained with another model, ...) ends the program with one line ``error: <message>`` on stderr and exit status 1
(2 for a bad command line, 130 for Ctrl-C); ``QWEN35_JAX_DEBUG=1`` shows the full traceback instead.
``report_user_error(error)`` is that mechanism (``tools.convert_hf`` calls it), ``report_user_errors()`` the same
as a context manager (``run`` uses it). User errors: OSError (missing file, existing output, ...), ValueError (the
config validation's messages name the fix; one raised inside a library, e.g. optax, is prefixed with its name),
FloatingPointError (the loop's non-finite stop), MemoryError, device out-of-memory, a TypeError raised explicitly
by this project's code, app.UsageError and flag-parsing errors. Anything else (AttributeError, IndexError, a
library's TypeError, ...) is a bug and keeps its traceback. A KeyboardInterrupt whose message is set (the training
loop's, after it saved a checkpoint) is printed as it is; a bare one prints ``error: interrupted``.
"""

from __future__ import annotations

import contextlib
import linecache
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator

import jax
import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

from qwen35_jax.train.config_schema import add_missing_fields

DEBUG_ENV = "QWEN35_JAX_DEBUG"
TRACEBACK_HINT = f"({DEBUG_ENV}=1 shows the traceback)"
USAGE_EXIT, INTERRUPT_EXIT = 2, 130
# Always the user's to fix, wherever raised: the file system or the machine (OSError: missing file, existing output,
# permission, ...; MemoryError), the loop's non-finite stop (FloatingPointError), and ValueError: our validation's
# messages name the fix, and a library's ValueError is nearly always about a value that came from the config.
_USER_ERRORS = (OSError, MemoryError, FloatingPointError, ValueError)
# A TypeError is a user error only when our code raised it explicitly; a library's or a builtin's is most likely a bug.
_PROJECT_USER_ERRORS = (TypeError,)
_PROJECT_MODULES = ("qwen35_jax", "experiments", "tools", "configs", "__main__")


class CommandLineError(Exception):
    """A flag or config override that cannot be parsed: one ``error:`` line, exit status 2."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "False")


def _raised_in(error: BaseException) -> tuple[str | None, bool]:
    """(the top-level package whose code raised ``error``, None for this project's; whether that line is a
    ``raise`` statement, i.e. not a builtin or C extension failing inside the expression)."""
    tb = error.__traceback__
    if tb is None:
        return None, True
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
    filename = tb.tb_frame.f_code.co_filename
    explicit = linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")
    if package in _PROJECT_MODULES or os.path.basename(os.path.dirname(filename)) == "configs":
        return None, explicit
    return package or "?", explicit


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and "RESOURCE_EXHAUSTED" in str(error).split("\n", 1)[0]


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def user_error_line(error: BaseException) -> tuple[str, int] | None:
    """``(the line to print, exit status)`` when ``error`` is a user error, else None (show its traceback)."""
    if isinstance(error, KeyboardInterrupt):
        return (str(error) or "error: interrupted"), INTERRUPT_EXIT
    if isinstance(error, CommandLineError):
        return f"error: {_one_line(str(error))}", USAGE_EXIT
    if isinstance(error, app.UsageError):
        return f"error: {_one_line(str(error))} (--help lists the flags)", USAGE_EXIT
    if _out_of_memory(error):  # XLA's message goes on for pages: keep its first line
        return (f"error: out of device memory: {str(error).splitlines()[0].strip()}; lower data.batch_size or "
                f"data.seq_len, raise train.grad_accum_steps or shard more (config.mesh) {TRACEBACK_HINT}"), 1
    where, explicit = _raised_in(error)
    if isinstance(error, _USER_ERRORS) or (isinstance(error, _PROJECT_USER_ERRORS) and where is None and explicit):
        message = re.sub(r"^\[Errno \d+\] ", "", _one_line(str(error))) or type(error).__name__
        if where is not None and not isinstance(error, OSError):  # not our validation: say whose message it is
            message = f"{where}: {message}"
        return f"error: {message} {TRACEBACK_HINT}", 1
    return None


def report_user_error(error: BaseException) -> int | None:
    """Print ``error`` as one ``error:`` line on stderr and return the exit status, when it is a user error and
    ``QWEN35_JAX_DEBUG`` is off; else print nothing and return None (the caller re-raises it)."""
    line = None if debug_enabled() or isinstance(error, SystemExit) else user_error_line(error)
    if line is None:
        return None
    sys.stdout.flush()
    sys.stderr.write(line[0] + "\n")
    sys.stderr.flush()
    return line[1]


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    """``report_user_error`` for the block: a user error becomes one line and ``SystemExit(status)``; any other
    exception propagates unchanged."""
    try:
        yield
    except BaseException as error:  # KeyboardInterrupt included; anything not a user error is re-raised
        status = report_user_error(error)
        if status is None:
            raise
        raise SystemExit(status) from None


def _unknown_key_message(argv: list[str], error: BaseException) -> str:
    text = str(error).replace("\\n", " ").replace("\\", "")
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    culprit = next((o for o in overrides if any(f"'{part}" in text for part in o[len("--config."):].split("."))),
                   None)
    key = culprit[len("--config."):] if culprit else "?"
    hint = re.search(r"Did you mean \w+", text)
    return (f"{culprit or overrides}: config key {key!r} does not exist{' (' + hint.group(0) + '?)' if hint else ''}. "
            "Check the spelling against the config file (or qwen35_jax/train/config_schema.py DEFAULTS); new keys "
            "cannot be added from the command line")


def _flag_error_message(error: flags.Error, flag_values: flags.FlagValues) -> str:
    text = str(error)
    # A config file whose get_config() raised: ml_collections embeds the traceback; keep its last line.
    raised = re.findall(r"^(?:\w+\.)*\w*(?:Error|Exception): (.+)$", text, flags=re.MULTILINE)
    head = re.match(r"flag (--[^=\s]+)=(\S*): ", text)
    if "Error whilst parsing config file" in text and raised:
        return f"{head.group(1)}={head.group(2)}: {raised[-1]}" if head else raised[-1]
    if head and head.group(1)[2:] in flag_values:  # a value of the wrong type: say which type is expected
        expected = flag_values[head.group(1)[2:]].parser.flag_type()
        return f"{head.group(1)}={head.group(2)}: expected {expected} ({_one_line(text[head.end():])})"
    return _one_line(text)


def _config_file_message(error: OSError, path: str | None = None) -> str:
    """One line for a config file that failed to load (``path``: the flag's value, else read from the message)."""
    if path is None:
        found = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)", str(error))
        path = found.group(1) if found else "?"
    file = path.split(":", 1)[0]
    if not os.path.exists(file):
        return (f"config file {file!r} does not exist (paths are relative to the current directory {os.getcwd()}; "
                "e.g. configs/tiny.py)")
    reason = re.sub(r"^.*\[Errno \d+\] ", "", str(error).strip().splitlines()[-1].strip())
    return f"config file {path!r} cannot be read: {reason}"


def _check_config_files(flag_values: flags.FlagValues) -> None:
    """ml_collections defers a config file's load error (an OSError) to the first use of the config: raise it now."""
    for name in list(flag_values):
        flag = flag_values[name]
        if flag.parser.flag_type() != "config object" or flag.value is None:  # not a config-file flag, or unset
            continue
        try:
            getattr(flag.value, "_qwen35_probe", None)  # a config's missing attribute is None; a failed load raises
        except OSError as error:
            if debug_enabled():
                raise
            raise CommandLineError(_config_file_message(error, config_flags.get_config_filename(flag))) from None


def parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
    """``flag_values(argv)``, with every unparsable flag or config override raised as one ``CommandLineError``
    naming it (``QWEN35_JAX_DEBUG=1``: the library's own exception)."""
    try:
        rest = flag_values(argv)
    except (AttributeError, KeyError) as error:  # ml_collections: an override of a key the config does not have
        if debug_enabled():
            raise
        raise CommandLineError(_unknown_key_message(argv, error)) from None
    except flags.Error as error:
        if debug_enabled():
            raise
        raise CommandLineError(_flag_error_message(error, flag_values)) from None
    except OSError as error:  # an override of a config file that failed to load
        if debug_enabled():
            raise
        raise CommandLineError(_config_file_message(error)) from None
    _check_config_files(flag_values)
    return rest


class _ExperimentConfigParser(config_flags_impl.ConfigFileFlagParser):
    """ml_collections' config-file parser, with every section's defaults filled in (``config_schema.DEFAULTS``)
    before the command line's overrides apply: ``--config.train.schedule=wsd`` works for a config file that does
    not spell the field out. Configs without a ``model`` section (not experiment configs) are left as they are."""

    def parse(self, path: str) -> ml_collections.ConfigDict:
        config = super().parse(path)  # unlocked (lock_config=False below)
        if isinstance(config, ml_collections.ConfigDict):
            if "model" in config:
                add_missing_fields(config)  # in place: the file's typed placeholders stay overridable
            config.lock()
        return config


def define_experiment_config(name: str = "config", help_string: str = "Experiment config file[:variant].", *,
                             flag_values: flags.FlagValues = flags.FLAGS,
                             sys_argv: list[str] | None = None) -> flags.FlagHolder:
    """``config_flags.DEFINE_config_file`` whose config has its defaults filled (``_ExperimentConfigParser``)."""
    # ml_collections exposes the parser but not a parser argument: its flag class is built here as it builds it.
    flag = config_flags_impl._ConfigFlag(  # noqa: SLF001
        parser=_ExperimentConfigParser(name=name, lock_config=False), serializer=flags.ArgumentSerializer(), name=name,
        default=None, help_string=help_string, flag_values=flag_values, accept_new_attributes=False,
        sys_argv=sys_argv)
    return flags.DEFINE_flag(flag, flag_values)


def load_config_with_overrides(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The experiment config ``--config=spec --config.a.b=v ...`` gives a program, parsed by the same
    ml_collections flag as the programs use (``overrides``: ``a.b=v`` strings), in a fresh flag set."""
    argv = ["config-check", f"--config={spec}", *[f"--config.{o}" for o in overrides]]
    flag_values = flags.FlagValues()
    define_experiment_config("config", "experiment config", flag_values=flag_values, sys_argv=argv)
    parse_flags(flag_values, argv)
    return flag_values.config


def _parse(argv: list[str]) -> list[str]:
    return parse_flags(flags.FLAGS, argv)


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at ``$QWEN35_JAX_CACHE`` (see the module docstring)."""
    path = os.environ.get("QWEN35_JAX_CACHE", os.path.expanduser("~/.cache/qwen35_jax/xla"))
    if path == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _main_with_setup(main: Callable[[list[str]], None], compilation_cache: bool) -> Callable[[list[str]], None]:
    def wrapped(argv: list[str]) -> None:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("qwen35_jax").setLevel(logging.INFO)
        if compilation_cache:
            enable_compilation_cache()
        with report_user_errors():  # here too: absl would print its usage text for an app.UsageError from main
            main(argv)

    return wrapped


def run(main: Callable[[list[str]], None], *, compilation_cache: bool = True) -> None:
    """``absl.app.run(main)`` with this module's flag parsing, logging, compilation cache and error reporting."""
    with report_user_errors():
        app.run(_main_with_setup(main, compilation_cache), flags_parser=_parse)
