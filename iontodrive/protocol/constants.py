"""Fixed numbers of protocol version 2. ``docs/protocol.md`` §2 explains each."""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 2
# The version before this one. A device answers its request frames with a version refusal (§9); a host
# refuses a device that speaks it (IncompatibleDeviceError).
PREVIOUS_PROTOCOL_VERSION: Final = 1

DELIMITER: Final = b"\x00"
HEADER_BYTES: Final = 4  # version u8, type u8, sequence u16 (little-endian)
CRC_BYTES: Final = 2  # CRC-16/CCITT-FALSE, big-endian (most significant byte first)
MAX_PAYLOAD_BYTES: Final = 120
MAX_BODY_BYTES: Final = HEADER_BYTES + MAX_PAYLOAD_BYTES + CRC_BYTES  # 126
# COBS adds one byte per started 254-byte block; the delimiter adds one more.
MAX_FRAME_BYTES: Final = MAX_BODY_BYTES + (MAX_BODY_BYTES + 253) // 254 + 1  # 128

UNSOLICITED_SEQ: Final = 0  # telemetry and events carry no request sequence
MIN_REQUEST_SEQ: Final = 1
MAX_SEQ: Final = 0xFFFF

OPEN_CIRCUIT_OHM: Final = 0xFFFF_FFFF  # impedance reported when no current can flow

REPLY_CACHE_SIZE: Final = 64  # the device remembers at least this many answers per host session (§7.3)
MAX_HOST_NONCE: Final = 0xFFFF_FFFF  # host nonces are 1..MAX_HOST_NONCE; 0 means "no host session"
MAX_PROBE_CURRENT_UA: Final = 50  # S3: the contact probe never exceeds 50 uA

# Timing (docs/protocol.md §8). The device reports its own watchdog bounds in IdentityReport; these are the
# values of safety requirement S10 that every model uses, and the host's defaults.
DEFAULT_WATCHDOG_MS: Final = 2000  # host-silence timeout after power-up (S10)
MIN_WATCHDOG_MS: Final = 500
MAX_WATCHDOG_MS: Final = 10_000
HEARTBEAT_DIVISOR: Final = 4  # the host sends some request at least every watchdog_ms / 4
DEFAULT_TELEMETRY_HZ: Final = 2  # telemetry rate after power-up (S14)
DEFAULT_REPLY_TIMEOUT_MS: Final = 250  # host: wait this long for the reply to one transmission
DEFAULT_RETRIES: Final = 3  # host: resend an unanswered request this many times, with the same seq
