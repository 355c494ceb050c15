/* Example device firmware on the generated codec (hand-written; docs/firmware.md walks through it).
 *
 * A UART receive interrupt puts bytes in a ring buffer; the main loop feeds them to the stream decoder and
 * answers each request with exactly one reply. The generated request x state table (ionto_request_rule)
 * decides first: a refused request gets its Nack (BAD_STATE, field STATE). Of the accepted ones, Identify
 * gets an IdentityReport, GetStatus a StatusReport, OpenSession a SessionOpened, Heartbeat and the safety
 * commands (nothing to lower: the output is at zero) an Ack; every other request a Nack UNSUPPORTED (this
 * skeleton drives no output). Frames that fail to decode are answered as docs/protocol.md 3.5, 6 and 9
 * require: a version refusal for a previous-version request, a Nack for an unknown type, a wrong length
 * or an undefined value when the header can be trusted and seq is not 0, nothing otherwise. Reset is
 * acknowledged and returns to the power-up state; built with -DEXAMPLE_STOP_ON_RESET (as the test suite
 * does) it then ends the program through semihosting so that the emulator stops. Not implemented (a real
 * device needs them, and the conformance suite checks them): the reply cache of 7.3, the watchdog,
 * telemetry, events, the request field checks, treatment sessions and the output itself.
 *
 * Board: ARM MPS2 with the AN386 image (Cortex-M4), as qemu-system-arm -M mps2-an386 emulates it; UART0 is
 * a CMSDK APB UART at 0x40004000 whose receive interrupt is IRQ 0. Nothing here is specific to qemu. */
#include "ionto_protocol.h"
#include "semihost.h"

/* ---- CMSDK APB UART0 ---- */
#define UART0_BASE 0x40004000u
#define UART_DATA (*(volatile uint32_t *)(UART0_BASE + 0x000u))
#define UART_STATE (*(volatile uint32_t *)(UART0_BASE + 0x004u))
#define UART_CTRL (*(volatile uint32_t *)(UART0_BASE + 0x008u))
#define UART_INTSTATUS (*(volatile uint32_t *)(UART0_BASE + 0x00Cu))
#define UART_BAUDDIV (*(volatile uint32_t *)(UART0_BASE + 0x010u))
#define UART_STATE_TX_FULL 0x1u
#define UART_STATE_RX_FULL 0x2u
#define UART_CTRL_TX_ENABLE 0x1u
#define UART_CTRL_RX_ENABLE 0x2u
#define UART_CTRL_RX_INTERRUPT 0x8u
#define UART_INT_RX 0x2u
#define NVIC_ISER0 (*(volatile uint32_t *)0xE000E100u)
#define UART0_RX_IRQ 0u

/* ---- SysTick: the device's millisecond clock (MPS2 system clock 25 MHz) ---- */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYSTEM_CLOCK_HZ 25000000u

void uart0_rx_handler(void);
void systick_handler(void);

static volatile uint32_t device_time_ms;

void systick_handler(void)
{
    device_time_ms++;
}

static void clock_init(void)
{
    SYST_RVR = SYSTEM_CLOCK_HZ / 1000u - 1u;
    SYST_CVR = 0u;
    SYST_CSR = 0x7u; /* processor clock, interrupt, enable */
}

/* ---- receive: interrupt -> ring buffer (single producer, single consumer) ---- */
#define RX_RING_BYTES 256u /* exactly 256: the uint8_t indices wrap by themselves */
static volatile uint8_t rx_ring[RX_RING_BYTES];
static volatile uint8_t rx_head; /* written by the interrupt only */
static volatile uint8_t rx_tail; /* written by the main loop only */
static volatile uint32_t rx_dropped; /* bytes lost to a full ring: the decoder then sees a bad frame */

void uart0_rx_handler(void)
{
    /* Acknowledge first, then drain: a byte that lands after the last check raises the interrupt again.
     * (Acknowledging after the drain could clear that byte's interrupt and stall reception for good.) */
    UART_INTSTATUS = UART_INT_RX;
    while ((UART_STATE & UART_STATE_RX_FULL) != 0u) {
        uint8_t byte = (uint8_t)(UART_DATA & 0xFFu);
        uint8_t next = (uint8_t)(rx_head + 1u);
        if (next != rx_tail) {
            rx_ring[rx_head] = byte;
            rx_head = next;
        } else {
            rx_dropped++;
        }
    }
}

/* The next received byte; sleeps while there is none. Interrupts are masked around the check so that a
 * byte arriving between the check and the WFI cannot be missed: a pending interrupt wakes WFI even while
 * masked, and is taken as soon as they are unmasked. */
static uint8_t next_byte(void)
{
    uint8_t byte;
    for (;;) {
        __asm__ volatile("cpsid i" ::: "memory");
        if (rx_tail != rx_head) {
            break;
        }
        __asm__ volatile("wfi\n\tcpsie i" ::: "memory");
    }
    __asm__ volatile("cpsie i" ::: "memory");
    byte = rx_ring[rx_tail];
    rx_tail = (uint8_t)(rx_tail + 1u);
    return byte;
}

/* ---- transmit: polled (a reply is at most IONTO_MAX_FRAME_BYTES) ---- */
static void uart_write(const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        while ((UART_STATE & UART_STATE_TX_FULL) != 0u) {
        }
        UART_DATA = data[i];
    }
}

static void uart_init(void)
{
    UART_BAUDDIV = 16u;
    UART_CTRL = UART_CTRL_TX_ENABLE | UART_CTRL_RX_ENABLE | UART_CTRL_RX_INTERRUPT;
    NVIC_ISER0 = 1u << UART0_RX_IRQ;
}

/* ---- the reply path ---- */
static void send(const ionto_frame_t *reply)
{
    uint8_t wire[IONTO_MAX_FRAME_BYTES];
    size_t len;
    if (ionto_encode(reply, wire, sizeof wire, &len) == IONTO_ENCODE_OK) {
        uart_write(wire, len);
    }
}

static void send_nack(uint16_t seq, uint8_t request_type, uint8_t code, uint8_t field, int64_t value,
                      int64_t minimum, int64_t maximum)
{
    ionto_frame_t reply;
    reply.type = IONTO_MESSAGE_TYPE_NACK;
    reply.seq = seq;
    reply.msg.nack.request_type = request_type;
    reply.msg.nack.code = code;
    reply.msg.nack.field = field;
    reply.msg.nack.value = value;
    reply.msg.nack.minimum = minimum;
    reply.msg.nack.maximum = maximum;
    send(&reply);
}

static void send_ack(uint16_t seq, uint8_t request_type)
{
    ionto_frame_t reply;
    reply.type = IONTO_MESSAGE_TYPE_ACK;
    reply.seq = seq;
    reply.msg.ack.request_type = request_type;
    send(&reply);
}

static const ionto_identity_report_t identity = {
    .model = "example-c",
    .serial_number = 15u,
    .firmware_major = 0u,
    .firmware_minor = 1u,
    .firmware_patch = 0u,
    .protocol_version = IONTO_PROTOCOL_VERSION,
    .max_current_ua = 4000u,
    .compliance_mv = 40000u,
    .dose_cap_uas = 4800000u,
    .slew_limit_ua_per_s = 1000u,
    .min_ramp_ms = 5000u,
    .max_ramp_ms = 60000u,
    .max_duration_ms = 3600000u,
    .trip_current_ua = 4400u,
    .waveforms = IONTO_WAVEFORM_SET_DC,
    .max_telemetry_hz = 100u,
    .min_pulse_frequency_hz = 0u,
    .max_pulse_frequency_hz = 0u,
    .min_watchdog_ms = IONTO_MIN_WATCHDOG_MS,
    .max_watchdog_ms = IONTO_MAX_WATCHDOG_MS,
    .min_current_ua = 100u,
    .min_duty_percent = 0u,
    .max_duty_percent = 0u,
};

static uint8_t device_state = IONTO_DEVICE_STATE_IDLE; /* this skeleton never leaves IDLE */

/* Host sessions (docs/protocol.md 7.3): a retry of the same OpenSession gets the same answer. */
static uint32_t host_sessions;
static uint32_t host_nonce;
static uint16_t open_session_seq;
static ionto_session_opened_t last_opened;

static void answer_identify(uint16_t seq)
{
    ionto_frame_t reply;
    reply.type = IONTO_MESSAGE_TYPE_IDENTITY_REPORT;
    reply.seq = seq;
    reply.msg.identity_report = identity;
    send(&reply);
}

static void answer_get_status(uint16_t seq)
{
    ionto_frame_t reply;
    ionto_status_report_t *status = &reply.msg.status_report;
    reply.type = IONTO_MESSAGE_TYPE_STATUS_REPORT;
    reply.seq = seq;
    status->device_time_ms = device_time_ms;
    status->state = device_state;
    status->flags = IONTO_STATUS_FLAGS_NONE;
    status->polarity = IONTO_POLARITY_NONE;
    status->target_current_ua = 0u;
    status->setpoint_ua = 0u;
    status->measured_ua = 0u;
    status->voltage_mv = 0u;
    status->impedance_ohm = IONTO_OPEN_CIRCUIT_OHM;
    status->charge_uas = 0u;
    status->target_charge_uas = 0u;
    status->remaining_ms = 0u;
    status->session_id = 0u;
    status->last_event_no = 0u;
    status->watchdog_ms = IONTO_DEFAULT_WATCHDOG_MS;
    status->telemetry_hz = 0u;
    send(&reply);
}

static void answer_open_session(uint16_t seq, uint32_t nonce)
{
    ionto_frame_t reply;
    bool retry = host_sessions > 0u && seq == open_session_seq && nonce == host_nonce;
    if (!retry) { /* a new host session replaces the previous one */
        last_opened.previous_nonce = host_nonce;
        last_opened.host_nonce = nonce;
        last_opened.host_session_no = ++host_sessions;
        open_session_seq = seq;
        host_nonce = nonce;
    }
    reply.type = IONTO_MESSAGE_TYPE_SESSION_OPENED;
    reply.seq = seq;
    reply.msg.session_opened = last_opened; /* a retry gets the same answer */
    send(&reply);
}

/* A frame that failed to decode: answer only where the header can be trusted (docs/protocol.md 3.5, 9). */
static void answer_decode_error(ionto_decode_status_t status, const ionto_frame_t *frame)
{
    size_t expected = 0;
    if (ionto_wants_version_refusal(status, frame)) {
        uint8_t wire[IONTO_MAX_FRAME_BYTES];
        size_t len;
        if (ionto_encode_version_refusal(frame->type, frame->seq, wire, sizeof wire, &len) == IONTO_ENCODE_OK) {
            uart_write(wire, len);
        }
        return;
    }
    if (!ionto_decode_status_has_header(status) || frame->seq == 0u) {
        return; /* COBS, length, CRC or version failed, or seq 0: nothing may be sent */
    }
    switch (status) {
    case IONTO_DECODE_UNKNOWN_TYPE:
    case IONTO_DECODE_BAD_SEQUENCE: /* a reply or unsolicited type with a sequence number */
        send_nack(frame->seq, frame->type, IONTO_ERROR_CODE_UNKNOWN_REQUEST, IONTO_FIELD_NONE, frame->type, 0, 0);
        break;
    case IONTO_DECODE_BAD_LENGTH:
        if (!ionto_is_request(frame->type)) {
            send_nack(frame->seq, frame->type, IONTO_ERROR_CODE_UNKNOWN_REQUEST, IONTO_FIELD_NONE, frame->type,
                      0, 0);
        } else if (ionto_payload_bytes(frame->type, &expected)) {
            send_nack(frame->seq, frame->type, IONTO_ERROR_CODE_BAD_LENGTH, IONTO_FIELD_NONE,
                      frame->payload_bytes, (int64_t)expected, (int64_t)expected);
        }
        break;
    case IONTO_DECODE_BAD_VALUE:
        /* frame->bad_field is the field's index in the layout and bad_value what it held; a real device also
         * gives the allowed range (minimum, maximum) */
        send_nack(frame->seq, frame->type, IONTO_ERROR_CODE_OUT_OF_RANGE,
                  ionto_nack_field(frame->type, frame->bad_field), frame->bad_value, 0, 0);
        break;
    default:
        break;
    }
}

/* The state after power-up and after Reset (S15): a real device also stops its output, clears its reply
 * cache, and restarts its watchdog, telemetry and event numbering. */
static void power_up(void)
{
    device_state = IONTO_DEVICE_STATE_IDLE;
    host_sessions = 0u;
    host_nonce = 0u;
    open_session_seq = 0u;
}

/* Returns false when the program should end (Reset, with EXAMPLE_STOP_ON_RESET). */
static bool answer(const ionto_frame_t *frame)
{
    ionto_rule_t rule;
    if (!ionto_is_request(frame->type) || !ionto_request_rule(frame->type, device_state, &rule)) {
        send_nack(frame->seq, frame->type, IONTO_ERROR_CODE_UNKNOWN_REQUEST, IONTO_FIELD_NONE, frame->type, 0, 0);
        return true;
    }
    if (rule.refusal != 0u) { /* the state table refuses it here: nothing changes */
        send_nack(frame->seq, frame->type, rule.refusal, IONTO_FIELD_STATE, device_state, 0, 0);
        return true;
    }
    switch (frame->type) {
    case IONTO_MESSAGE_TYPE_IDENTIFY:
        answer_identify(frame->seq);
        return true;
    case IONTO_MESSAGE_TYPE_GET_STATUS:
        answer_get_status(frame->seq);
        return true;
    case IONTO_MESSAGE_TYPE_OPEN_SESSION:
        if (frame->msg.open_session.host_nonce == 0u) { /* 0 means "no host session" (7.3) */
            send_nack(frame->seq, frame->type, IONTO_ERROR_CODE_OUT_OF_RANGE, IONTO_FIELD_HOST_NONCE, 0, 1,
                      IONTO_MAX_HOST_NONCE);
        } else {
            answer_open_session(frame->seq, frame->msg.open_session.host_nonce);
        }
        return true;
    case IONTO_MESSAGE_TYPE_RESET:
        send_ack(frame->seq, frame->type);
        power_up();
#ifdef EXAMPLE_STOP_ON_RESET
        return false; /* the emulated test run ends here */
#else
        return true;
#endif
    default:
        if (frame->type == IONTO_MESSAGE_TYPE_HEARTBEAT || ionto_is_safety_request(frame->type)) {
            send_ack(frame->seq, frame->type); /* accepted; at zero output there is nothing to do */
        } else {
            send_nack(frame->seq, frame->type, IONTO_ERROR_CODE_UNSUPPORTED, IONTO_FIELD_NONE, 0, 0, 0);
        }
        return true;
    }
}

int main(void)
{
    static ionto_decoder_t decoder; /* 144 bytes of state on a Cortex-M4, no allocation */
    ionto_frame_t frame;
    bool running = true;

    ionto_decoder_init(&decoder);
    power_up();
    clock_init();
    uart_init();
    semihost_write("example device: ready\n"); /* the emulated UART drops bytes until it is enabled */
    while (running) {
        ionto_decode_status_t status = ionto_decoder_push(&decoder, next_byte(), &frame);
        if (status == IONTO_DECODE_OK) {
            running = answer(&frame);
        } else if (status != IONTO_DECODE_PENDING) {
            answer_decode_error(status, &frame);
        }
    }
    semihost_write("example device: reset requested, stopping\n");
    return 0;
}
