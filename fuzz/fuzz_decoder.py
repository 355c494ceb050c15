"""atheris harness: arbitrary bytes, in arbitrary pieces, into the protocol ``Decoder``.

Checked for every input (``harness.check_decoder``): no exception escapes, at most one frame's worth of
bytes is ever held, the result is the same however the bytes are split, and every decoded frame
re-encodes to itself. Memory is bounded by libFuzzer's ``-rss_limit_mb``.

    .venv/bin/python fuzz/fuzz_decoder.py -max_total_time=60 -rss_limit_mb=1024 fuzz/corpus/decoder
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import harness

    import iontodrive.protocol  # noqa: F401  (instrumented for coverage)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = [fdp.ConsumeIntInRange(0, 512) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    harness.check_decoder(payload, cuts)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
