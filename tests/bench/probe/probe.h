// probe.h: what the C files of paced_probe share: limits, the connection type, the globals and
// the functions one file calls in another. See paced_probe.c for what the probe does and which
// file does what.
//
// Every .c file includes this header first: it defines _GNU_SOURCE before any system header.
#ifndef PACED_PROBE_H
#define PACED_PROBE_H

#define _GNU_SOURCE
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define MAX_PAIRS 1024
#define MAX_PAYLOAD (4u << 20)        // 4 MiB: a Remaining Length of 4 bytes
#define MIN_PAYLOAD 16u               // send time, sequence, pair index
#define QOS1_WINDOW 100u              // like tests/bench/paced.ts's WINDOW
#define SETUP_TIMEOUT_S 10            // connect, TLS handshake, CONNACK, SUBACK
#define MAX_SAMPLES (200u * 1000 * 1000)

enum { PUB = 0, SUB = 1 };

typedef struct {
  int fd;
  SSL *ssl;
  int role;
  int pair;
  char label[16];
  // Input: bytes read and not yet parsed. Bounded: one packet must fit.
  uint8_t *in;
  size_t in_cap, in_len;
  // Output: bytes [out_head, out_head + out_len) waiting for the socket. Bounded.
  uint8_t *out;
  size_t out_cap, out_head, out_len;
  int read_wants_write, write_wants_read;
  uint32_t registered;  // epoll events currently asked for
  uint64_t last_write_ns;
  // Publisher.
  uint8_t *tmpl;  // the PUBLISH packet, patched per message
  size_t tmpl_len, tmpl_id_at, tmpl_payload_at;
  uint32_t inflight, seq;
  uint16_t next_id;
  uint64_t sent, acked, skipped;
  // Subscriber.
  uint64_t received, duplicates;
  int64_t last_seq;
} Conn;

// ---- Globals, all defined in paced_probe.c ---------------------------------------------------

// Options.
extern const char *host, *port_s, *ca_file, *tls_name, *id_prefix, *dump_file;
extern int pairs, qos, version, raw, keepalive_s;
extern double rate, warmup_s, window_s, drain_s;
extern size_t payload;

extern SSL_CTX *ssl_ctx;     // NULL: plain TCP
extern Conn *conns;          // 2 * pairs: pub of pair i at 2i, sub at 2i + 1
extern int ep;               // the epoll instance; -1 until the run
extern uint32_t pub_window;  // QoS 1 in-flight limit per publisher (CONNACK may lower it)
extern uint32_t max_packet;  // broker's Maximum Packet Size (0: none)

// Measurement.
extern uint64_t warm_end_ns, win_end_ns;
extern uint64_t *lat, *lat_send;
extern size_t nlat, caplat, dropped_samples;
extern uint64_t window_sent, window_received;

// ---- Functions, by the file that defines them ------------------------------------------------

// paced_probe.c
void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void *xmalloc(size_t n);

// Inline in every file: the send and receive stamps are taken without a call between files.
static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// mqtt_codec.c
size_t put_varint(uint8_t *p, size_t n);
size_t varint_size(size_t n);
size_t put_str(uint8_t *p, const char *s);
int frame(const uint8_t *p, size_t n, size_t *header, size_t *len);
int get_varint(const uint8_t *b, size_t n, size_t *at, uint32_t *out);
int get_property(const uint8_t *b, size_t n, size_t *at, uint32_t *id, uint32_t *value);

// conn_io.c
void ssl_fatal(const char *what, const Conn *c) __attribute__((noreturn));
ssize_t conn_recv(Conn *c, uint8_t *buf, size_t n);
ssize_t conn_send(Conn *c, const uint8_t *buf, size_t n);
void update_events(Conn *c);
void flush(Conn *c);
uint8_t *out_reserve(Conn *c, size_t n);
void queue_or_die(Conn *c, const uint8_t *bytes, size_t n);

// conn_setup.c
void write_blocking(Conn *c, const uint8_t *b, size_t n);
void dial(Conn *c);
void mqtt_connect(Conn *c, const char *client_id);
void mqtt_subscribe(Conn *c, const char *filter);
void build_template(Conn *c);

// traffic.c
void publish(Conn *c);
void on_readable(Conn *c);

#endif
