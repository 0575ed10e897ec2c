"""A coverage-guided fuzz target for the input parsers (atheris, libFuzzer's engine).

The property-based tests (tests/test_input_formats.py, hypothesis) check fixed properties on
random records in every test run; this explores the parsers' branches for as long as you
let it (libFuzzer's options; a folder argument is its corpus, which it grows)::

    .venv/bin/pip install atheris
    mkdir -p /tmp/vigil-corpus
    .venv/bin/python tests/fuzz_parsers.py /tmp/vigil-corpus -max_total_time=600

Each input is parsed by every format's parser; an exception out of ``parse`` (instead of a
rejected record) is a finding: atheris stops and writes the input as ``crash-*``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from vigil.streams.parsers import FORMATS, make_parser

NOW_MS = 1_796_000_000_000
PARSERS = [make_parser(fmt) for fmt in FORMATS]


def one_input(data: bytes) -> None:
    for parser in PARSERS:
        result = parser.parse(data, NOW_MS)
        assert len(result.series) == len(result.ts_ms) == len(result.values)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
