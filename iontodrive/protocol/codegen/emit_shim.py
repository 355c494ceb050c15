"""Render the host-side shim ``host/ionto_host_shim.c``: a layout-free door into the codec for ``ctypes``.

Python talks to the C codec through arrays of :c:type:`ionto_test_value_t` (one per field, in layout
order: a 64-bit number, two's complement for signed fields, or a text) instead of mirroring every C
struct in ``ctypes``. The shim is generated with the codec, so the two always agree with each other; when
they are older than the Python definitions the values simply differ, which is what the differential tests
detect, without any risk of reading outside a struct. Not for firmware: it exists for the tests and
``bench/codec.py``.
"""

from __future__ import annotations

from .emit_c import HEADER_NAME, PREFIX, banner, literal, member_name
from .model import FieldDef, Schema

SHIM_NAME = "host/ionto_host_shim.c"


def _from_value(field: FieldDef, index: int, target: str) -> list[str]:
    value = f"values[{index}]"
    if field.kind == "text":
        assert field.text_bytes is not None
        return [f"        copy_text({target}, {value}.text, {field.text_bytes}u + 1u);"]
    if field.kind == "bool":
        return [f"        {target} = {value}.number != 0u;"]
    bits = field.wire_bytes * 8
    if field.signed:
        return [f"        {target} = (int{bits}_t)signed_of({value}.number);"]
    return [f"        {target} = (uint{bits}_t){value}.number;"]


def _to_value(field: FieldDef, index: int, source: str) -> list[str]:
    value = f"values[{index}]"
    if field.kind == "text":
        assert field.text_bytes is not None
        return [f"        copy_text({value}.text, {source}, {field.text_bytes}u + 1u);"]
    if field.kind == "bool":
        return [f"        {value}.number = {source} ? 1u : 0u;"]
    return [f"        {value}.number = (uint64_t){source};"]


def render_shim(schema: Schema) -> str:
    text_bytes = max(schema.max_text_bytes, 1)
    out = [banner(schema, "Host-side test shim of the C codec (for ctypes; not for firmware).")]
    out += [
        f'#include "../{HEADER_NAME}"',
        "",
        f"#define TEXT_BYTES {literal(text_bytes)}",
        "",
        "typedef struct {",
        "    uint64_t number; /* integers, enums, bit sets, bools; signed fields in two's complement */",
        "    char text[TEXT_BYTES + 1u];",
        f"}} {PREFIX}_test_value_t;",
        "",
        f"uint32_t {PREFIX}_test_fingerprint(void);",
        f"size_t {PREFIX}_test_sizes(size_t which);",
        f"int {PREFIX}_test_encode(uint8_t type, uint16_t seq, const {PREFIX}_test_value_t *values, "
        "size_t count,",
        "                     uint8_t *out, size_t out_size, size_t *out_len);",
        f"int {PREFIX}_test_values(const {PREFIX}_frame_t *frame, {PREFIX}_test_value_t *values, "
        "size_t capacity);",
        f"uint32_t {PREFIX}_test_decode_loop(const uint8_t *encoded, size_t len, uint32_t n);",
        f"uint32_t {PREFIX}_test_feed_loop(const uint8_t *stream, size_t len, uint32_t n);",
        f"uint32_t {PREFIX}_test_encode_loop(const {PREFIX}_frame_t *frame, uint32_t n);",
        f"void {PREFIX}_test_header(const {PREFIX}_frame_t *frame, uint32_t *out);",
        f"void {PREFIX}_test_counts(const {PREFIX}_decoder_t *decoder, uint32_t *out);",
        "",
        "/* frames_ok, frames_bad and the pending byte count of a stream decoder. */",
        f"void {PREFIX}_test_counts(const {PREFIX}_decoder_t *decoder, uint32_t *out)",
        "{",
        "    out[0] = decoder->frames_ok;",
        "    out[1] = decoder->frames_bad;",
        "    out[2] = (uint32_t)decoder->length;",
        "}",
        "",
        "/* type, version, seq, payload_bytes, bad_field, bad_value of a frame (whatever they hold). */",
        f"void {PREFIX}_test_header(const {PREFIX}_frame_t *frame, uint32_t *out)",
        "{",
        "    out[0] = frame->type;",
        "    out[1] = frame->version;",
        "    out[2] = frame->seq;",
        "    out[3] = frame->payload_bytes;",
        "    out[4] = frame->bad_field;",
        "    out[5] = frame->bad_value;",
        "}",
        "",
        f"uint32_t {PREFIX}_test_fingerprint(void)",
        "{",
        f"    return {PREFIX.upper()}_SCHEMA_FINGERPRINT;",
        "}",
        "",
        "/* 0: value, 1: frame, 2: stream decoder, 3: text bytes of a value (all in bytes). */",
        f"size_t {PREFIX}_test_sizes(size_t which)",
        "{",
        f"    static const size_t sizes[] = {{sizeof({PREFIX}_test_value_t), sizeof({PREFIX}_frame_t),",
        f"                                   sizeof({PREFIX}_decoder_t), TEXT_BYTES}};",
        "    return which < sizeof sizes / sizeof sizes[0] ? sizes[which] : 0u;",
        "}",
        "",
        "static void copy_text(char *to, const char *from, size_t n)",
        "{",
        "    size_t i;",
        "    for (i = 0; i < n; i++) {",
        "        to[i] = from[i];",
        "    }",
        "}",
        "",
        "static int64_t signed_of(uint64_t u)",
        "{",
        "    return u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(UINT64_MAX - u) - 1;",
        "}",
        "",
        "/* Fill a frame of `type` from `count` values and encode it. -1 if count is not the field count. */",
        f"int {PREFIX}_test_encode(uint8_t type, uint16_t seq, const {PREFIX}_test_value_t *values, "
        "size_t count,",
        "                     uint8_t *out, size_t out_size, size_t *out_len)",
        "{",
        f"    {PREFIX}_frame_t frame;",
        "    frame.type = type;",
        "    frame.seq = seq;",
        f"    frame.version = {PREFIX.upper()}_PROTOCOL_VERSION;",
        "    frame.payload_bytes = 0;",
        f"    frame.bad_field = {PREFIX.upper()}_NO_FIELD;",
        "    frame.bad_value = 0;",
        "    switch (type) {",
    ]
    for message in schema.messages:
        out += [
            f"    case {literal(message.type_id)}: /* {message.name} */",
            f"        if (count != {len(message.fields)}u) {{",
            "            return -1;",
            "        }",
        ]
        for index, field in enumerate(message.fields):
            out += _from_value(field, index, f"frame.msg.{member_name(message)}.{field.name}")
        out.append("        break;")
    out += [
        "    default:",
        "        break; /* the codec reports the unknown type */",
        "    }",
        "    (void)values;",
        f"    return (int){PREFIX}_encode(&frame, out, out_size, out_len);",
        "}",
        "",
        "/* The fields of a decoded frame as values; returns their count, or -1 (unknown type, no room). */",
        f"int {PREFIX}_test_values(const {PREFIX}_frame_t *frame, {PREFIX}_test_value_t *values, "
        "size_t capacity)",
        "{",
        "    switch (frame->type) {",
    ]
    for message in schema.messages:
        out.append(f"    case {literal(message.type_id)}: /* {message.name} */")
        if message.fields:
            out += [
                f"        if (capacity < {len(message.fields)}u) {{",
                "            return -1;",
                "        }",
            ]
        for index, field in enumerate(message.fields):
            out += _to_value(field, index, f"frame->msg.{member_name(message)}.{field.name}")
        out.append(f"        return {len(message.fields)};")
    out += [
        "    default:",
        "        (void)values;",
        "        (void)capacity;",
        "        return -1;",
        "    }",
        "}",
        "",
        "/* Benchmark loops: the work of n frames in one call, so that no ctypes overhead is counted. */",
        f"uint32_t {PREFIX}_test_decode_loop(const uint8_t *encoded, size_t len, uint32_t n)",
        "{",
        f"    {PREFIX}_frame_t frame;",
        "    uint32_t ok = 0;",
        "    uint32_t i;",
        "    for (i = 0; i < n; i++) {",
        f"        ok += {PREFIX}_decode_body(encoded, len, &frame) == {PREFIX.upper()}_DECODE_OK ? 1u : 0u;",
        "    }",
        "    return ok;",
        "}",
        "",
        f"uint32_t {PREFIX}_test_feed_loop(const uint8_t *stream, size_t len, uint32_t n)",
        "{",
        f"    {PREFIX}_decoder_t decoder;",
        f"    {PREFIX}_frame_t frame;",
        "    uint32_t ok = 0;",
        "    uint32_t i;",
        f"    {PREFIX}_decoder_init(&decoder);",
        "    for (i = 0; i < n; i++) {",
        "        size_t at = 0;",
        "        while (at < len) {",
        f"            {PREFIX}_decode_status_t status;",
        f"            at += {PREFIX}_decoder_feed(&decoder, stream + at, len - at, &status, &frame);",
        f"            ok += status == {PREFIX.upper()}_DECODE_OK ? 1u : 0u;",
        "        }",
        "    }",
        "    return ok;",
        "}",
        "",
        f"uint32_t {PREFIX}_test_encode_loop(const {PREFIX}_frame_t *frame, uint32_t n)",
        "{",
        f"    uint8_t out[{PREFIX.upper()}_MAX_FRAME_BYTES];",
        "    size_t len;",
        "    uint32_t ok = 0;",
        "    uint32_t i;",
        "    for (i = 0; i < n; i++) {",
        f"        ok += {PREFIX}_encode(frame, out, sizeof out, &len) == {PREFIX.upper()}_ENCODE_OK "
        "? 1u : 0u;",
        "    }",
        "    return ok;",
        "}",
        "",
    ]
    return "\n".join(out)
