"""What the tests' stage programs (stagecmd.py, hostile_stage.py, timed_stage.py) share,
made to start fast: vvflow runs them thousands of times in the suite, and the usual
imports (argparse, json, pathlib, random, subprocess, uuid) cost them about 60 ms of CPU
at every start, three times the interpreter's own start. Only os and sys are imported
here (and json's C half, without the regular expressions its Python half compiles); a
program imports anything else inside the branch that needs it. test_stage_program.py
checks these against argparse and json.
"""

from __future__ import annotations

import os
import sys

try:
    from _json import encode_basestring_ascii as _json_string
except ImportError:  # an interpreter without json's C accelerator
    from json.encoder import py_encode_basestring_ascii as _json_string


class Args:
    """The parsed command line: one attribute per option and positional argument."""

    def __init__(self, values: dict[str, str | None]) -> None:
        self.__dict__.update(values)


def parse_args(
    argv: list[str], positionals: tuple[str, ...], required: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> Args:  # fmt: skip
    """What `argparse` makes of `argv` for these programs: `--NAME VALUE` or
    `--NAME=VALUE` anywhere for the options named in `required` and `optional` (an
    optional one left out is None), and exactly the `positionals`, in order, around
    them. Anything else is a usage error: exit 2."""
    values: dict[str, str | None] = dict.fromkeys(optional)
    given: list[str] = []
    args = iter(argv)
    for arg in args:
        name, equals, value = arg.partition("=")
        if name.startswith("--") and name[2:] in (*required, *optional):
            values[name[2:]] = value if equals else next(args, None)
            if values[name[2:]] is None:
                _usage(f"{name} needs a value")
        else:
            given.append(arg)
    missing = [f"--{name}" for name in required if values.get(name) is None]
    if missing:
        _usage(f"the following arguments are required: {', '.join(missing)}")
    if len(given) != len(positionals):
        _usage(f"expected {len(positionals)} arguments ({', '.join(positionals)}): {given}")
    values.update(zip(positionals, given, strict=True))
    return Args(values)


def _usage(message: str) -> None:
    sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {message}\n")
    sys.exit(2)


def json_text(value: object) -> str:
    """`json.dumps(value)`, to the character, for the values these programs write: str
    (any, lone surrogates too), int, float, bool, None, and lists, tuples and dicts with
    str keys of those."""
    if isinstance(value, str):
        return str(_json_string(value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # what json writes for a finite number
    if isinstance(value, dict):
        items = (f"{_key(key)}: {json_text(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(json_text(item) for item in value) + "]"
    raise TypeError(f"json_text cannot write {type(value).__name__}")


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"json_text writes str keys only, not {key!r}")
    return str(_json_string(key))


def uniform(low: float, high: float) -> float:
    """A random number between `low` and `high`, as `random.uniform` (without its import)."""
    return low + (high - low) * int.from_bytes(os.urandom(7), "big") / (1 << 56)


def run_id() -> str:
    """A random run id of 32 hex digits, as `uuid.uuid4().hex` (without its import)."""
    return os.urandom(16).hex()
