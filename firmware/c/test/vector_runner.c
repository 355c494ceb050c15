/* Conformance of the generated C codec to docs/vectors.json, on the host and on the emulated Cortex-M4.
 *
 * For every vector: encoding the expected frame gives the wire bytes exactly, and feeding the wire bytes to
 * the stream decoder gives the expected header back and a frame that encodes to the same bytes (so every
 * field was decoded as expected). Then a hostile stream must give, result by result, what the Python
 * decoder gave for it. Hand-written and generic: the data comes from vector_table.h, generated at test time
 * by iontodrive.protocol.codegen.emit_vectors. Prints one line per failure and a summary; returns 0 when
 * everything agrees. */
#include "ionto_protocol.h"
#include "platform.h"
#include "vector_table.h"

static void write_number(unsigned long value)
{
    char digits[12];
    size_t at = sizeof digits - 1u;
    digits[at] = '\0';
    do {
        digits[--at] = (char)('0' + (char)(value % 10u));
        value /= 10u;
    } while (value != 0u && at > 0u);
    platform_write(&digits[at]);
}

static bool same_bytes(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
    size_t i;
    if (a_len != b_len) {
        return false;
    }
    for (i = 0; i < a_len; i++) {
        if (a[i] != b[i]) {
            return false;
        }
    }
    return true;
}

static const char *check_vector(const vector_t *vector)
{
    uint8_t out[IONTO_MAX_FRAME_BYTES];
    size_t len = 0;
    size_t i;
    ionto_decoder_t decoder;
    ionto_frame_t frame;
    ionto_decode_status_t status = IONTO_DECODE_PENDING;

    if (ionto_encode(&vector->expected, out, sizeof out, &len) != IONTO_ENCODE_OK) {
        return "encode refused the expected frame";
    }
    if (!same_bytes(out, len, vector->wire, vector->wire_len)) {
        return "encode gave other bytes";
    }
    ionto_decoder_init(&decoder);
    for (i = 0; i < vector->wire_len; i++) {
        status = ionto_decoder_push(&decoder, vector->wire[i], &frame);
        if (i + 1u < vector->wire_len && status != IONTO_DECODE_PENDING) {
            return "decoder finished before the delimiter";
        }
    }
    if (status != IONTO_DECODE_OK) {
        return ionto_decode_status_name(status);
    }
    if (frame.type != vector->expected.type || frame.seq != vector->expected.seq) {
        return "decoded another header";
    }
    if (ionto_encode(&frame, out, sizeof out, &len) != IONTO_ENCODE_OK
        || !same_bytes(out, len, vector->wire, vector->wire_len)) {
        return "decoded fields differ";
    }
    return 0;
}

static unsigned long check_stream(unsigned long *agreed)
{
    ionto_decoder_t decoder;
    ionto_frame_t frame;
    size_t at = 0;
    size_t result = 0;
    unsigned long failures = 0;
    const size_t expected = sizeof stream_results / sizeof stream_results[0];

    ionto_decoder_init(&decoder);
    while (at < sizeof stream) {
        ionto_decode_status_t status;
        at += ionto_decoder_feed(&decoder, stream + at, sizeof stream - at, &status, &frame);
        if (status == IONTO_DECODE_PENDING) {
            continue;
        }
        if (result >= expected) {
            failures++;
            continue;
        }
        if ((unsigned)status != stream_results[result].status
            || ((status == IONTO_DECODE_OK || ionto_decode_status_has_header(status))
                && (frame.type != stream_results[result].type || frame.seq != stream_results[result].seq))) {
            platform_write("FAIL stream result ");
            write_number((unsigned long)result);
            platform_write(": C says ");
            platform_write(ionto_decode_status_name(status));
            platform_write("\n");
            failures++;
        } else {
            (*agreed)++;
        }
        result++;
    }
    if (result != expected) {
        platform_write("FAIL stream: result count differs\n");
        failures++;
    }
    return failures;
}

int main(void)
{
    size_t i;
    unsigned long failures = 0;
    unsigned long vector_failures = 0;
    unsigned long agreed = 0;
    const size_t count = sizeof vectors / sizeof vectors[0];

    if (EXPECTED_FINGERPRINT != IONTO_SCHEMA_FINGERPRINT) {
        platform_write("FAIL the codec was generated from other definitions than the vectors' Python\n");
        failures++;
    }
    for (i = 0; i < count; i++) {
        const char *problem = check_vector(&vectors[i]);
        if (problem != 0) {
            platform_write("FAIL vector ");
            write_number((unsigned long)i);
            platform_write(" ");
            platform_write(vectors[i].name);
            platform_write(": ");
            platform_write(problem);
            platform_write("\n");
            vector_failures++;
        }
    }
    failures += vector_failures;
    platform_write("vectors: ");
    write_number((unsigned long)count - vector_failures);
    platform_write(" of ");
    write_number((unsigned long)count);
    platform_write(" agree in both directions\n");
    failures += check_stream(&agreed);
    platform_write("stream: ");
    write_number(agreed);
    platform_write(" of ");
    write_number((unsigned long)(sizeof stream_results / sizeof stream_results[0]));
    platform_write(" results agree with the Python decoder\n");
    platform_write(failures == 0u ? "PASS\n" : "FAIL\n");
    return failures == 0u ? 0 : 1;
}
