"""atheris harness: arbitrary bytes and frames into a simulated device in the middle of a session.

Each input picks a scene (clinic-4 DC at 2 mA, or hydro-30 pulsed DC at 15 mA, both in HOLD) and a mode:
raw bytes; frames with a valid CRC around an arbitrary type, sequence number and payload; or well-formed
requests with arbitrary field values (mostly out of the device's range). ``harness.check_device`` then
asserts that nothing escapes, the buffers stay bounded, and that if the device refused everything (NACK)
or only answered read-only requests, its output, set-point, state, dose, polarity and flags one second
later equal those of an untouched twin: no refused command ever changes the output.

    .venv/bin/python fuzz/fuzz_firmware.py -max_total_time=60 -rss_limit_mb=1024 fuzz/corpus/firmware
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import harness

    import firmware_sim  # noqa: F401  (instrumented for coverage)
    from iontodrive.protocol import MESSAGE_CLASSES, EncodeError, MessageKind, encode
    from iontodrive.protocol.fastpath import COMPILED_BY_CLASS

REQUESTS = [cls for cls in MESSAGE_CLASSES if cls.TYPE.kind is MessageKind.REQUEST]


def _field_value(fdp: atheris.FuzzedDataProvider, spec: object) -> object:
    if getattr(spec, "text_bytes", None) is not None:
        return fdp.ConsumeUnicodeNoSurrogates(int(spec.text_bytes))  # type: ignore[attr-defined]
    if spec.code == "?":  # type: ignore[attr-defined]
        return fdp.ConsumeBool()
    allowed = getattr(spec, "allowed", None)
    if allowed is not None:
        members = list(spec.python_type)  # type: ignore[attr-defined]
        return members[fdp.ConsumeIntInRange(0, len(members) - 1)]
    if getattr(spec, "flag_mask", None) is not None:
        return spec.python_type(fdp.ConsumeIntInRange(0, int(spec.flag_mask)) & int(spec.flag_mask))  # type: ignore[attr-defined]
    return fdp.ConsumeIntInRange(int(spec.minimum), int(spec.maximum))  # type: ignore[attr-defined]


def _request(fdp: atheris.FuzzedDataProvider) -> bytes:
    cls = REQUESTS[fdp.ConsumeIntInRange(0, len(REQUESTS) - 1)]
    values = {spec.name: _field_value(fdp, spec) for spec in COMPILED_BY_CLASS[cls].specs}
    try:
        return encode(cls(**values), fdp.ConsumeIntInRange(1, 0xFFFF))
    except EncodeError:  # a value the wire cannot carry (e.g. non-ASCII text): nothing to send
        return b""


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    scene = harness.SCENES[fdp.ConsumeIntInRange(0, len(harness.SCENES) - 1)]
    mode = fdp.ConsumeIntInRange(0, 2)
    chunks: list[bytes] = []
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        if mode == 0:
            chunks.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)))
        elif mode == 1:
            type_id = fdp.ConsumeIntInRange(0, 255)
            seq = fdp.ConsumeIntInRange(0, 0xFFFF)
            chunks.append(harness.raw_frame(type_id, seq, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 130))))
        else:
            chunks.append(_request(fdp))
    harness.check_device(scene, chunks)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
