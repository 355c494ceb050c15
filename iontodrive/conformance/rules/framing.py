"""Framing rules (``docs/protocol.md`` §2, §3.5, §8.1): what the device sends, and what it must ignore.

The device's own frames are read twice: by the protocol core's decoder and by the independent reading of
:mod:`iontodrive.conformance.frames` (bitwise CRC, COBS re-encoding), so that a fault shared by the
codec and the device cannot hide. Frames the host sends wrong on purpose carry a ``SetWatchdog`` with a
new timeout, so that "no reply and nothing changed" can be checked with one ``GetStatus`` afterwards.
"""

from __future__ import annotations

import struct

from iontodrive.protocol import (
    DEFAULT_TELEMETRY_HZ,
    MAX_FRAME_BYTES,
    PREVIOUS_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    ConfigureTelemetry,
    ErrorCode,
    FetchEvents,
    Field,
    GetStatus,
    Identify,
    MessageType,
    SetWatchdog,
    StatusReport,
    encode,
)

from .. import frames
from ..frames import RawFrame
from ..probe import Probe, describe
from ..rule import Rule, RuleFailed, expect, rule

_U16 = struct.Struct("<H")
_NACK = struct.Struct("<BBBqqq")  # request_type, code, field, value, minimum, maximum (§4.2 Nack)
TRAFFIC_DEVICE_S = 0.5  # device time of telemetry collected by :func:`traffic`
TRAFFIC_FALLBACK_HZ = 20  # telemetry rate asked for when the identity is unknown


def traffic(probe: Probe) -> list[RawFrame]:
    """Make the device send every kind of frame it has at idle (replies, a NACK, telemetry at a high rate,
    live and replayed events) and return everything it sent, split at the delimiters.

    Sends without waiting for replies, so that it works (and gives evidence) even when the device's
    replies cannot be decoded."""
    rate = probe.observe_hz() if probe.identity is not None else TRAFFIC_FALLBACK_HZ
    for message in (ConfigureTelemetry(rate), Identify(), GetStatus(), SetWatchdog(0), FetchEvents(0, 255)):
        probe.send(message)  # SetWatchdog(0) is refused: a NACK
        probe.drain(probe.reply_timeout_s / 5)
    probe.drain(probe.host_s(TRAFFIC_DEVICE_S))
    probe.send(ConfigureTelemetry(DEFAULT_TELEMETRY_HZ))
    probe.drain(probe.reply_timeout_s / 5)
    return frames.split_raw(bytes(probe.raw))


def _examples(items: list[RawFrame], limit: int = 2) -> str:
    return "; ".join(item.encoded[:24].hex(" ") for item in items[:limit])


@rule(
    "FRAME-COBS",
    "§2.2",
    "every frame from the device is valid COBS, uniquely encoded, ending in one 0x00",
    needs_identity=False,
)
def frame_cobs(probe: Probe) -> str:
    seen = traffic(probe)
    expect(len(seen) >= 5, f"only {len(seen)} frame(s) seen; expected replies, telemetry and events")
    bad = [f for f in seen if f.body is None]
    expect(not bad, f"{len(bad)} of {len(seen)} frames are not valid COBS, e.g. {_examples(bad)}")
    odd = [f for f in seen if not f.cobs_canonical]
    expect(not odd, f"{len(odd)} of {len(seen)} frames are not the unique COBS encoding of their body")
    return f"{len(seen)} frames, all valid, canonical COBS"


@rule(
    "FRAME-CRC",
    "§2.3",
    "every frame from the device carries CRC-16/CCITT-FALSE of its body, big-endian",
    needs_identity=False,
)
def frame_crc(probe: Probe) -> str:
    seen = [f for f in traffic(probe) if f.body is not None]
    expect(len(seen) >= 5, f"only {len(seen)} decodable frame(s) seen")
    wrong = [f for f in seen if not f.crc_ok]
    if wrong:
        swapped = [f for f in wrong if f.crc_swapped]
        why = (
            f"{len(swapped)} of them carry the right CRC little-endian (byte order swapped)"
            if swapped
            else "the CRC does not match in either byte order"
        )
        raise RuleFailed(
            f"{len(wrong)} of {len(seen)} frames fail the CRC check; {why}; e.g. {_examples(wrong)}"
        )
    return f"{len(seen)} frames, CRC right and big-endian (checked with the bitwise reference CRC)"


@rule(
    "FRAME-HEADER",
    "§2.1",
    "device frames: version byte, known type, payload length of the type, seq rules",
    needs_identity=False,
)
def frame_header(probe: Probe) -> str:
    seen = [f for f in traffic(probe) if f.body is not None and f.crc_ok]
    expect(len(seen) >= 5, f"only {len(seen)} frame(s) with a good CRC seen")
    problems = [f"{kind.value}: {error.detail}" for _, error in probe.decode_errors for kind in (error.kind,)]
    versions = sorted({f.body[0] for f in seen if f.body is not None})
    expect(versions == [PROTOCOL_VERSION], f"version bytes {versions}; expected only {PROTOCOL_VERSION}")
    expect(not problems, f"{len(problems)} frame(s) failed the receiver checks: {'; '.join(problems[:3])}")
    return f"{len(seen)} frames: version {PROTOCOL_VERSION}, known types, right lengths and sequence numbers"


@rule(
    "FRAME-SIZE",
    "§2.4",
    "no frame from the device is longer than MAX_FRAME_BYTES (128) with its delimiter",
    needs_identity=False,
)
def frame_size(probe: Probe) -> str:
    seen = traffic(probe)
    longest = max((len(f.encoded) + 1 for f in seen), default=0)
    expect(bool(seen), "no frames seen")
    expect(longest <= MAX_FRAME_BYTES, f"a frame of {longest} bytes; at most {MAX_FRAME_BYTES} allowed")
    return f"{len(seen)} frames, longest {longest} bytes"


def _new_watchdog_ms(probe: Probe, current_ms: int) -> int:
    ident = probe.ident
    candidate = current_ms + 777
    return candidate if candidate <= ident.max_watchdog_ms else ident.min_watchdog_ms


def _silently_ignored(probe: Probe, data: bytes, what: str) -> str:
    """Send ``data`` (not a valid request); require no reply within the deadline and no change."""
    before = probe.status()
    mark = len(probe.replies)
    probe.write(data, request=False)
    probe.drain(probe.reply_timeout_s)
    answers = probe.replies[mark:]
    if answers:
        raise RuleFailed(
            f"{what} was answered by {describe(answers[0].message)}; no frame may answer it (§3.5)"
        )
    after = probe.status()
    expect(
        after.watchdog_ms == before.watchdog_ms and after.telemetry_hz == before.telemetry_hz,
        f"{what} changed the device: watchdog {before.watchdog_ms} -> {after.watchdog_ms} ms",
    )
    return f"{what}: no reply, nothing changed"


def _watchdog_frame(
    probe: Probe,
    *,
    seq: int | None = None,
    version: int = PROTOCOL_VERSION,
    crc_order: str = "big",
    crc_xor: int = 0,
) -> bytes:
    """A raw SetWatchdog to a timeout the device does not have now, spoiled as the arguments say."""
    payload = _U16.pack(_new_watchdog_ms(probe, probe.status().watchdog_ms))
    number = probe.next_seq() if seq is None else seq
    return frames.frame(
        MessageType.SET_WATCHDOG, number, payload, version=version, crc_order=crc_order, crc_xor=crc_xor
    )


@rule(
    "FRAME-BAD-CRC",
    "§3.5",
    "a request with a wrong CRC, or its CRC little-endian, gets no reply and changes nothing",
)
def frame_bad_crc(probe: Probe) -> str:
    swapped = _watchdog_frame(probe, crc_order="little")
    while frames.split_raw(swapped)[0].crc_ok:  # the CRC's two bytes are equal: it is right either way,
        swapped = _watchdog_frame(probe, crc_order="little")  # 1 in 256; another seq
    notes = [
        _silently_ignored(
            probe, _watchdog_frame(probe, crc_xor=0x0001), "SetWatchdog with one CRC bit flipped"
        ),
        _silently_ignored(probe, swapped, "SetWatchdog with its CRC little-endian"),
    ]
    return "; ".join(notes)


@rule(
    "FRAME-VERSION", "§9", "a frame of an unknown (later) protocol version gets no reply and changes nothing"
)
def frame_version(probe: Probe) -> str:
    return _silently_ignored(
        probe,
        _watchdog_frame(probe, version=(PROTOCOL_VERSION + 1) & 0xFF),
        f"SetWatchdog as version {PROTOCOL_VERSION + 1}",
    )


@rule(
    "VERSION-REFUSAL",
    "§9",
    f"a version-{PREVIOUS_PROTOCOL_VERSION} request gets the version refusal: a "
    f"version-{PREVIOUS_PROTOCOL_VERSION} Nack UNSUPPORTED, nothing changed",
    min_version=2,
)
def version_refusal(probe: Probe) -> str:
    old = PREVIOUS_PROTOCOL_VERSION
    before = probe.status()
    seq = probe.next_seq()
    raw_mark = len(probe.raw)
    probe.write(_watchdog_frame(probe, seq=seq, version=old), request=False)
    probe.drain(probe.reply_timeout_s)
    answers = [
        f for f in frames.split_raw(bytes(probe.raw[raw_mark:])) if f.body is not None and f.body[0] == old
    ]
    expect(
        bool(answers),
        f"no version-{old} frame came back for a version-{old} SetWatchdog (§9: the device answers it with "
        "a refusal)",
    )
    body = answers[0].body
    assert body is not None
    expect(answers[0].crc_ok, f"the version-{old} refusal has a bad CRC: {answers[0].encoded.hex(' ')}")
    expect(len(answers) == 1, f"{len(answers)} version-{old} frames came back for one request")
    expect(
        body[1] == MessageType.NACK and len(body) == 4 + _NACK.size + 2,
        f"the version-{old} answer is type 0x{body[1]:02X}, {len(body)} bytes; expected a Nack",
    )
    got_seq = body[2] | (body[3] << 8)
    request_type, code, fld, value, low, high = _NACK.unpack_from(body, 4)
    evidence = (
        f"version {old} Nack(request 0x{request_type:02X}, code {code}, field {fld}, value {value}, range "
        f"{low}..{high}), seq {got_seq}"
    )
    expect(
        got_seq == seq and request_type == MessageType.SET_WATCHDOG,
        f"refusal for the wrong request: {evidence}",
    )
    expect(
        (code, fld, value, low, high)
        == (ErrorCode.UNSUPPORTED, Field.NONE, old, PROTOCOL_VERSION, PROTOCOL_VERSION),
        f"{evidence}; expected UNSUPPORTED, field NONE, value {old}, range "
        f"{PROTOCOL_VERSION}..{PROTOCOL_VERSION}",
    )
    after = probe.status()
    expect(
        after.watchdog_ms == before.watchdog_ms,
        f"the version-{old} SetWatchdog was executed: {before.watchdog_ms} -> {after.watchdog_ms} ms",
    )
    return evidence + "; nothing changed"


@rule("FRAME-SEQ-ZERO", "§3.5, §7.1", "a request with sequence number 0 gets no reply and changes nothing")
def frame_seq_zero(probe: Probe) -> str:
    return _silently_ignored(probe, _watchdog_frame(probe, seq=0), "SetWatchdog with seq 0")


@rule(
    "FRAME-BAD-COBS",
    "§2.2, §3.5",
    "a frame whose COBS code overruns the frame, or an oversize run, is dropped",
)
def frame_bad_cobs(probe: Probe) -> str:
    good = _watchdog_frame(probe)
    overrun = bytes([0x40]) + good[1:]  # first code byte announces 63 bytes; far fewer follow
    notes = [_silently_ignored(probe, overrun, "a frame whose first COBS code overruns it")]
    notes.append(_silently_ignored(probe, bytes([0x11] * 300) + b"\x00", "300 bytes without a delimiter"))
    reply = probe.request(GetStatus())
    expect(isinstance(reply, StatusReport), f"after the oversize run GetStatus got {reply!r}")
    return "; ".join(notes) + "; the next request was answered"


@rule("FRAME-EMPTY", "§3.5, §8.1", "empty frames (a lone 0x00, several in a row) are ignored without reply")
def frame_empty(probe: Probe) -> str:
    note = _silently_ignored(probe, b"\x00" * 5, "five lone delimiters")
    return note


@rule("FRAME-TORN", "§3.5, §8.1", "a torn frame is dropped: flushed by 0x00, or run into the next frame")
def frame_torn(probe: Probe) -> str:
    torn = _watchdog_frame(probe)
    half = torn[: len(torn) // 2]
    notes = [_silently_ignored(probe, half + b"\x00", "half a SetWatchdog, then a lone 0x00")]
    # The torn half runs into a whole frame: one run, which fails the CRC; neither may be executed.
    notes.append(_silently_ignored(probe, half + _watchdog_frame(probe), "half a frame run into a whole one"))
    reply = probe.request(GetStatus())
    expect(isinstance(reply, StatusReport), f"the request after the torn frames got {reply!r}")
    return "; ".join(notes) + "; the next request was answered"


@rule("FRAME-CHUNKS", "§1, §3.5", "a request written one byte at a time is answered exactly once")
def frame_chunks(probe: Probe) -> str:
    seq = probe.next_seq()
    data = encode(GetStatus(), seq)
    mark = probe.mark()
    for index in range(len(data)):
        probe.write(data[index : index + 1], request=index == len(data) - 1)
    first = probe.await_reply(seq, probe.reply_timeout_s, mark)
    expect(first is not None, "a GetStatus written byte by byte got no reply")
    probe.drain(probe.reply_timeout_s)
    answers = probe.replies_to(seq, mark)
    expect(len(answers) == 1, f"{len(answers)} replies to one request written byte by byte")
    expect(isinstance(answers[0].message, StatusReport), f"answered by {answers[0].message!r}")
    return f"{len(data)} one-byte writes: one StatusReport"


RULES: tuple[Rule, ...] = (
    frame_cobs,
    frame_crc,
    frame_header,
    frame_size,
    frame_bad_crc,
    frame_version,
    version_refusal,
    frame_seq_zero,
    frame_bad_cobs,
    frame_empty,
    frame_torn,
    frame_chunks,
)
