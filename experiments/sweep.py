"""Run a sweep of config overrides x seeds one point after another (or print the commands), then tabulate the
results per arm (mean ± std over seeds) and plot them.

  python -m experiments.sweep --config configs/ablations/layer_ratio.py --workdir runs/ablations/layer_ratio
  python -m experiments.sweep --config configs/tiny.py --workdir runs/sweep \
      --sweep 'model.full_attention_interval=2,4;model.num_experts=4,8' [--sweep_set train.steps=20] [--seeds 0,1]

The arms: a config file that defines ``get_sweep(arg)`` (``configs/ablations/*.py``, see
``qwen35_jax.train.ablations.Sweep``) names them and their seeds; otherwise ``--sweep`` gives ``;``-separated axes
``key=v1,v2,...`` whose cartesian product are the arms (``--sweep`` also overrides a file's arms); ``{sweep_workdir}``
in a value stands for the sweep's folder (a decay branch's ``train.branch_from``). ``--sweep_set``:
overrides shared by every point (same syntax, one value each). ``--seeds 0,1,2`` (default: the file's seeds, else
one run per arm with the config's own seed) trains every arm once per seed, overriding ``seed`` and ``data.seed``.

Every point's config is built and validated first, exactly as ``experiments.train`` will parse it: a misspelled key,
an ill-typed value or an invalid combination ends the sweep with one ``error:`` line naming the points, before
anything trains (exit status 2). ``--dry_run`` validates every point, then prints the commands (e.g. to submit them
to a cluster). Each point trains with ``python -m experiments.train`` into ``WORKDIR/<arm>[/seed<k>]`` (a
subprocess: a failed point does not stop the others; rerunning the sweep resumes unfinished points from their
checkpoints and skips finished ones). At the end: ``WORKDIR/results.md`` (per arm: mean ± std over seeds of the
final validation loss and bits per byte per corpus, MQAR accuracy per setting, ms per step, parameters; then every
point, with the commit, jax and devices it ran on; then each distinct software set), ``WORKDIR/points.csv`` (one row
per point: non-embedding parameters, tokens trained, final losses, provenance; what ``tools.fit_scaling_law`` reads),
``WORKDIR/loss.png`` (training loss per arm with a seed band) and, with MQAR results, ``WORKDIR/recall.png``.
The exit status is 1 when any point failed.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from absl import app, flags

from qwen35_jax.train.cli import CommandLineError, load_config_with_overrides, run
from qwen35_jax.train.config_schema import validate_config
from qwen35_jax.train.metrics import read_records
from qwen35_jax.train.recipes import load_config_module
from qwen35_jax.train.sweep_results import SweepPoint, summarize, write_results

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags. Defined on demand (by ``__main__`` or a test), not at import, so this module can be
    imported next to the other command-line modules in one process."""
    if "sweep" in FLAGS:
        return
    flags.DEFINE_string("config", None, "Experiment config file[:variant], as for experiments.train.")
    flags.DEFINE_string("workdir", None, "Folder for the points' workdirs, results.md and the plots.")
    flags.DEFINE_string("sweep", None, "Axes 'a.b=v1,v2;c.d=w1,w2' (cartesian product); default: the config "
                        "file's get_sweep() arms.")
    flags.DEFINE_string("sweep_set", "", "Overrides for every point, 'a.b=v;c.d=w'.")
    flags.DEFINE_string("seeds", "", "Comma-separated seeds, e.g. 0,1,2 (default: the config file's, else one run).")
    flags.DEFINE_bool("dry_run", False, "Validate every point, print the commands and exit.")


def parse_axes(spec: str, what: str = "--sweep") -> list[tuple[str, list[str]]]:
    """``'a.b=1,2;c=x'`` → ``[("a.b", ["1", "2"]), ("c", ["x"])]``; keys must be unique."""
    axes = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, values = part.partition("=")
        key = key.strip().removeprefix("--config.").removeprefix("config.")
        if not sep or not key or not values.strip():
            raise ValueError(f"{what} entry {part!r} is invalid: write key=value1,value2 (e.g. model.num_experts=4,8)")
        axes.append((key, [v.strip() for v in values.split(",") if v.strip()]))
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what} names a key twice ({keys}); give each key once")
    return axes


def grid(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    return [dict(zip([k for k, _ in axes], values, strict=True)) for values in itertools.product(*[v for _, v in axes])]


def point_name(point: Mapping[str, str]) -> str:
    name = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in point.items())
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "base"


def override_text(value: Any) -> str:
    """A config value as ``--config.key=<text>`` parses it back (ml_collections' flag parsers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds={text!r} is invalid: write comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={text!r} names a seed twice")
    return seeds


def sweep_arms(config_spec: str, sweep: str | None) -> tuple[dict[str, dict[str, str]], tuple[int, ...], str]:
    """``(arms {name: overrides}, the file's seeds, axis label)`` from ``--sweep`` or the file's ``get_sweep``."""
    if sweep:
        return {point_name(p): p for p in grid(parse_axes(sweep))}, (), ""
    path, _, arg = config_spec.partition(":")
    module = load_config_module(path)
    if not hasattr(module, "get_sweep"):
        raise app.UsageError(f"{path} defines no get_sweep(): give the arms with --sweep 'a.b=v1,v2' (see the "
                             "module docstring)")
    definition = module.get_sweep(arg or None)
    arms = {name: {k: override_text(v) for k, v in overrides.items()} for name, overrides in definition.arms.items()}
    return arms, tuple(definition.seeds), definition.axis_label


def build_points(arms: Mapping[str, Mapping[str, str]], seeds: list[int], shared: Mapping[str, str],
                 ) -> list[SweepPoint]:
    """Every (arm, seed) pair; without seeds one point per arm named after it."""
    points = []
    for arm, overrides in arms.items():
        for seed in seeds or [None]:
            seeded = {} if seed is None else {"seed": str(seed), "data.seed": str(seed)}
            name = arm if seed is None else f"{arm}/seed{seed}"
            points.append(SweepPoint(name, arm, seed, {**shared, **overrides, **seeded}))
    return points


def _override_args(overrides: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def validate_points(config_spec: str, points: list[SweepPoint]) -> list[SweepPoint]:
    """Parse and validate every point's config as ``experiments.train`` will; returns the points with their tokens
    per step. Raises one ``CommandLineError`` listing every failing point and its message."""
    checked, failures = [], {}
    for point in points:
        try:
            config = load_config_with_overrides(config_spec, _override_args(point.overrides))
            validate_config(config)
        except (CommandLineError, ValueError) as error:
            failures.setdefault(str(error).removeprefix("error: "), []).append(point.name)
            continue
        tokens = int(config.data.get("seq_len", 0)) * int(config.data.get("batch_size", 0))
        checked.append(SweepPoint(point.name, point.arm, point.seed, point.overrides, tokens))
    if failures:
        raise CommandLineError("; ".join(f"sweep point(s) {', '.join(names)}: {message}"
                                         for message, names in failures.items()) + " — nothing was trained")
    return checked


SWEEP_WORKDIR = "{sweep_workdir}"  # in an override's value: the sweep's folder (e.g. a decay branch's source)


def command(config: str, workdir: str, overrides: Mapping[str, str], sweep_workdir: str = "") -> list[str]:
    """The ``experiments.train`` command of the point trained in ``workdir`` (``sweep_workdir/<point>``)."""
    resolved = {k: v.replace(SWEEP_WORKDIR, os.path.abspath(sweep_workdir)) for k, v in overrides.items()}
    return [sys.executable, "-m", "experiments.train", "--config", config, "--workdir", workdir,
            *[f"--config.{o}" for o in _override_args(resolved)]]


def run_points(config_spec: str, workdir: str, points: list[SweepPoint]) -> tuple[list[str], list[str]]:
    """Train every unfinished point in turn; returns the names of the points trained and of those that failed."""
    trained, failed = [], []
    for i, point in enumerate(points, 1):
        point_dir = os.path.join(workdir, point.name)
        tag = f"[{i}/{len(points)}] {point.name}"
        if summarize(read_records(point_dir))["status"] == "done":
            print(f"{tag}: already done", flush=True)
            continue
        cmd = command(config_spec, point_dir, point.overrides, workdir)
        print(f"{tag}: {shlex.join(cmd)}", flush=True)
        begin = time.perf_counter()
        result = subprocess.run(cmd, check=False)
        trained.append(point.name)
        print(f"{tag}: {'FAILED (exit ' + str(result.returncode) + ')' if result.returncode else 'done'} in "
              f"{time.perf_counter() - begin:.0f} s", flush=True)
        if result.returncode:
            failed.append(point.name)
    return trained, failed


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not (FLAGS.config and FLAGS.workdir):
        raise app.UsageError("--config and --workdir are required (see the module docstring)")
    arms, file_seeds, axis_label = sweep_arms(FLAGS.config, FLAGS.sweep)
    seeds = parse_seeds(FLAGS.seeds) if FLAGS.seeds else list(file_seeds)
    shared = {k: v[0] for k, v in parse_axes(FLAGS.sweep_set, "--sweep_set")}
    points = validate_points(FLAGS.config, build_points(arms, seeds, shared))
    if FLAGS.dry_run:
        for point in points:
            print(shlex.join(command(FLAGS.config, os.path.join(FLAGS.workdir, point.name), point.overrides,
                                     FLAGS.workdir)))
        return
    os.makedirs(FLAGS.workdir, exist_ok=True)
    begin = time.perf_counter()
    trained, failed = run_points(FLAGS.config, FLAGS.workdir, points)
    wall = time.perf_counter() - begin
    ran = f"this invocation trained {len(trained)} point(s) in {wall / 60:.1f} min wall" if trained else \
        "every point was already done"
    notes = [f"`python -m experiments.sweep --config {FLAGS.config}`: {len(arms)} arms x {max(len(seeds), 1)} "
             f"seed(s); {ran}."]
    print(write_results(FLAGS.workdir, points, title=f"Sweep: {FLAGS.config}", notes=notes, axis_label=axis_label))
    print(f"sweep wall time: {wall:.0f} s", flush=True)
    if failed:
        print(f"error: {len(failed)} point(s) failed: {', '.join(failed)} (rerun the sweep to resume them)",
              file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    run(main)
