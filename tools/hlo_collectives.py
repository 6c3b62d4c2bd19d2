"""Bytes each kind of collective moves per chip in one execution of a compiled program, read from its HLO text.

  from tools.hlo_collectives import collective_bytes
  table = collective_bytes(compiled.as_text())   # {(source, op): bytes per chip per step}

Every collective instruction (``all-gather``, ``all-reduce``, ``reduce-scatter``, ``all-to-all``,
``collective-permute``, ``ragged-all-to-all``; the ``-start`` half of async pairs) counts the bytes of its result
buffers, for a reduce-scatter those of its input (result × group size): the full-size buffer the collective
assembles or reduces, about what each chip exchanges (a combined tuple collective counts every member), times how
often it runs: the product of the trip counts of the while loops around it (the block scan, the LM-head chunks,
...). A loop's trip count is its ``known_trip_count`` or else the largest integer constant its condition compares
against (XLA:TPU prints no count); a loop with a data-dependent bound counts once. ``source`` groups instructions by
the innermost project file of their stack frames: the GDN state exchange, the attention K/V exchange, the MoE layer
(its expert weights' gathers and the token dispatch), or "other" (FSDP weight gathers, which XLA:TPU may emit as
all-reduces, gradient reductions, the conv halo, the loss).
"""

from __future__ import annotations

import collections
import re

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all")
SOURCES = (("ops/gated_delta_rule/context_parallel.py", "GDN state exchange"),
           ("ops/attention/context_parallel.py", "attention K/V exchange"),
           ("ops/moe/", "MoE (expert weights, dispatch)"))
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_CALLEES = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_CONDITION = re.compile(r"condition=%?([\w.\-]+)")
_CONSTANT = re.compile(r"s(?:32|64)\[\][^=]*constant\((\d+)\)")
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_GROUPS_LISTED = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[\d+,(\d+)\]")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")


def _group_size(line: str) -> int:
    """Devices in each replica group of a collective (1 when the groups are not printed in a known form)."""
    listed = _GROUPS_LISTED.search(line)
    if listed:
        return len(listed.group(1).split(","))
    iota = _GROUPS_IOTA.search(line)
    if iota:
        return int(iota.group(1))
    mesh = _GROUPS_MESH.search(line)
    if mesh:
        sizes = dict((name.strip("'"), int(size)) for name, size in
                     (item.split("=") for item in mesh.group(1).split(",")))
        size = 1
        for name in mesh.group(2).split(","):
            size *= sizes.get(name.strip().strip("'"), 1)
        return size
    return 1


def _array_bytes(text: str) -> list[int]:
    sizes = []
    for dtype, dims in _ARRAY.findall(text):
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        sizes.append(count * _BYTES.get(dtype, 4))
    return sizes


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """Instruction lines per computation name, and the entry computation's name."""
    bodies: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            bodies[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None and line.strip() and line.strip() != "}":
            bodies[current].append(line)
    return bodies, entry


def _trip_count(line: str, bodies: dict[str, list[str]]) -> int:
    """Iterations of the while loop on ``line`` (see the module docstring); 1 for other instructions."""
    if " while(" not in line:
        return 1
    known = _TRIP.search(line)
    if known:
        return int(known.group(1))
    condition = _CONDITION.search(line)
    constants = [int(c) for text in bodies.get(condition.group(1), ()) for c in _CONSTANT.findall(text)] \
        if condition else []
    return max(constants, default=1)


def _multiplicities(bodies: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How many times each computation runs per execution of the entry computation."""
    calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for name, lines in bodies.items():
        for line in lines:
            times = _trip_count(line, bodies)
            for callee in _CALLEES.findall(line):
                calls[name].append((callee, times))
            for group in _BRANCHES.findall(line):
                calls[name].extend((c.strip().lstrip("%"), 1) for c in group.split(",") if c.strip())
    counts: dict[str, int] = collections.defaultdict(int)

    def visit(name: str, times: int, depth: int = 0) -> None:
        counts[name] += times
        if depth < 64:
            for callee, factor in calls.get(name, ()):
                visit(callee, times * factor, depth + 1)

    visit(entry, 1)
    return counts


def _frame_files(hlo: str) -> dict[int, list[str]]:
    """Stack frame id -> its files, innermost first, from the module's FileNames / FileLocations / StackFrames."""
    tables: dict[str, dict[int, str]] = {"FileNames": {}, "FileLocations": {}, "StackFrames": {}}
    current = None
    for line in hlo.splitlines():
        if line in tables or line == "FunctionNames":
            current = tables.get(line)
            continue
        if current is None or not line[:1].isdigit():
            if line.startswith(("HloModule", "%", "ENTRY")) or not line.strip():
                current = None if line.strip() else current
            continue
        key, _, value = line.partition(" ")
        current[int(key)] = value
    files = {int(k): v.strip('"') for k, v in tables["FileNames"].items()}
    location_file = {k: files.get(int(re.search(r"file_name_id=(\d+)", v).group(1)), "")
                     for k, v in tables["FileLocations"].items() if "file_name_id=" in v}
    frames = {}
    for k, v in tables["StackFrames"].items():
        location = re.search(r"file_location_id=(\d+)", v)
        parent = re.search(r"parent_frame_id=(\d+)", v)
        frames[k] = (location_file.get(int(location.group(1)), "") if location else "",
                     int(parent.group(1)) if parent else 0)
    chains = {}
    for frame in frames:
        chain, seen, node = [], set(), frame
        while node in frames and node not in seen:
            seen.add(node)
            chain.append(frames[node][0])
            node = frames[node][1]
        chains[frame] = chain
    return chains


def _source(line: str, frames: dict[int, list[str]]) -> str:
    frame = _FRAME.search(line)
    for path in frames.get(int(frame.group(1)), []) if frame else [line]:
        for fragment, label in SOURCES:
            if fragment in path:
                return label
    return "other"


def _result_bytes(line: str, result_type: str, asynchronous: bool) -> int:
    """Bytes of the result buffers; an async ``-start`` returns (operands..., results..., [u32 scalars])."""
    sizes = [size for size, text in zip(_array_bytes(result_type), _ARRAY.findall(result_type), strict=True)
             if text[1]]  # scalars (sync flags) dropped
    if asynchronous and len(sizes) >= 2:
        sizes = sizes[len(sizes) // 2:]
    return sum(sizes)


def collective_bytes(hlo: str) -> dict[tuple[str, str], int]:
    """``{(source, collective op): bytes per chip per execution}`` of an optimized HLO module's text."""
    bodies, entry = _computations(hlo)
    counts = _multiplicities(bodies, entry)
    frames = _frame_files(hlo)
    totals: dict[tuple[str, str], int] = collections.defaultdict(int)
    for name, lines in bodies.items():
        for line in lines:
            match = _OP.search(line)
            if not match or counts.get(name, 0) == 0:
                continue
            size = _result_bytes(line, match.group(1), bool(match.group(3)))
            if match.group(2) == "reduce-scatter":
                size *= _group_size(line)
            if size:
                totals[(_source(line, frames), match.group(2))] += size * counts[name]
    return dict(totals)


def format_table(totals: dict[tuple[str, str], int]) -> str:
    """A Markdown table of ``collective_bytes``, largest first, GiB per chip per step."""
    rows = ["| source | collective | GiB per chip per step |", "|---|---|---|"]
    for (source, op), size in sorted(totals.items(), key=lambda item: -item[1]):
        rows.append(f"| {source} | {op} | {size / 2**30:.3f} |")
    return "\n".join(rows)
