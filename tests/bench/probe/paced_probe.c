// paced_probe: the bench's latency client (tests/bench/probe.ts builds and runs it).
//
// N publisher/subscriber pairs against one MQTT broker (publisher i publishes to bench/pair/<i>,
// subscriber i subscribes to it), paced to a total rate by an absolute timerfd schedule with the
// publishers evenly staggered, in ONE thread (epoll): the send time stamped into each payload and
// the receive time come from the same CLOCK_MONOTONIC, with no event loop or garbage collector of
// the client's own between the socket and the clock.
//
// Payload (at least 16 bytes): send time (CLOCK_MONOTONIC ns, u64, stamped just before the write),
// sequence number (u32), pair index (u32), then filler; all host byte order (the same process
// reads them back). MQTT 5 or 3.1.1, QoS 0 or 1 (subscribers acknowledge at once; a publisher keeps
// at most 100 messages unacknowledged, or the broker's Receive Maximum if lower, and skips a beat
// when it has that many). Plain TCP or TLS (OpenSSL, server certificate verified against --ca),
// TCP_NODELAY on every socket.
//
// stdout: "window-start" when the measured window begins, "window-end" when it ends, then one JSON
// line (latencies in µs, nearest-rank percentiles of the deliveries received in the window). Any
// error (refused CONNACK/SUBACK, malformed packet, the broker closing a connection, a timeout
// while connecting) goes to stderr and the exit code is 1; a bad command line exits 2.
//
// Build: cc -O2 -Wall -Wextra -o paced_probe paced_probe.c -lssl -lcrypto
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

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

// Options.
static const char *host = "127.0.0.1";
static const char *port_s = NULL;
static const char *ca_file = NULL;
static const char *tls_name = NULL;
static const char *id_prefix = NULL;
static const char *dump_file = NULL;
static int pairs = 16, qos = 0, version = 5, raw = 0, keepalive_s = 60;
static double rate = 0, warmup_s = 0, window_s = 0, drain_s = 2;
static size_t payload = 64;

static SSL_CTX *ssl_ctx;
static Conn *conns;  // 2 * pairs: pub of pair i at 2i, sub at 2i + 1
static int ep = -1;
static uint32_t pub_window = QOS1_WINDOW;
static uint32_t max_packet = 0;  // broker's Maximum Packet Size (0: none)

// Measurement.
static uint64_t warm_end_ns, win_end_ns;
static uint64_t *lat, *lat_send;
static size_t nlat, caplat, dropped_samples;
static uint64_t window_sent, window_received;

static void fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("paced_probe: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static void ssl_fatal(const char *what, const Conn *c) __attribute__((noreturn));
static void ssl_fatal(const char *what, const Conn *c) {
  char buf[256] = "";
  unsigned long e = ERR_get_error();
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  if (c != NULL && c->ssl != NULL && SSL_get_verify_result(c->ssl) != X509_V_OK) {
    fatal("%s: %s: %s (certificate: %s)", c->label, what, buf,
          X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
  }
  fatal("%s: %s: %s", c != NULL ? c->label : "tls", what, buf[0] ? buf : "(no detail)");
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (p == NULL) fatal("out of memory (%zu bytes)", n);
  return p;
}

// ---- MQTT encoding and decoding -------------------------------------------------------------

static size_t put_varint(uint8_t *p, size_t n) {
  size_t i = 0;
  do {
    uint8_t b = n & 0x7f;
    n >>= 7;
    if (n) b |= 0x80;
    p[i++] = b;
  } while (n);
  return i;
}

static size_t varint_size(size_t n) { return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4; }

static size_t put_str(uint8_t *p, const char *s) {
  size_t n = strlen(s);
  p[0] = (uint8_t)(n >> 8);
  p[1] = (uint8_t)(n & 0xff);
  memcpy(p + 2, s, n);
  return n + 2;
}

// The fixed header of the packet at p[0..n): 1 complete (header and body length set), 0 more
// bytes needed, -1 malformed (a Remaining Length longer than 4 bytes).
static int frame(const uint8_t *p, size_t n, size_t *header, size_t *len) {
  size_t value = 0;
  for (size_t i = 1; i <= 4; i++) {
    if (i >= n) return 0;
    value |= (size_t)(p[i] & 0x7f) << (7 * (i - 1));
    if (!(p[i] & 0x80)) {
      *header = i + 1;
      *len = value;
      return n - *header >= value ? 1 : 0;
    }
  }
  return -1;
}

// A varint inside a packet body b[*at..n); -1 when it runs past the end or over 4 bytes.
static int get_varint(const uint8_t *b, size_t n, size_t *at, uint32_t *out) {
  uint32_t value = 0;
  for (int i = 0; i < 4; i++) {
    if (*at >= n) return -1;
    uint8_t x = b[(*at)++];
    value |= (uint32_t)(x & 0x7f) << (7 * i);
    if (!(x & 0x80)) {
      *out = value;
      return 0;
    }
  }
  return -1;
}

// One MQTT 5 property at b[*at..n): its id and, for the numeric ones, its value. -1 if malformed.
static int get_property(const uint8_t *b, size_t n, size_t *at, uint32_t *id, uint32_t *value) {
  if (get_varint(b, n, at, id) < 0) return -1;
  *value = 0;
  size_t left = n - *at, skip;
  switch (*id) {
    case 0x01: case 0x17: case 0x19: case 0x24: case 0x25: case 0x28: case 0x29: case 0x2A:
      if (left < 1) return -1;
      *value = b[*at];
      *at += 1;
      return 0;
    case 0x13: case 0x21: case 0x22: case 0x23:
      if (left < 2) return -1;
      *value = ((uint32_t)b[*at] << 8) | b[*at + 1];
      *at += 2;
      return 0;
    case 0x02: case 0x11: case 0x18: case 0x27:
      if (left < 4) return -1;
      *value = ((uint32_t)b[*at] << 24) | ((uint32_t)b[*at + 1] << 16) |
               ((uint32_t)b[*at + 2] << 8) | b[*at + 3];
      *at += 4;
      return 0;
    case 0x0B:
      return get_varint(b, n, at, value);
    case 0x03: case 0x08: case 0x09: case 0x12: case 0x15: case 0x16: case 0x1A: case 0x1C:
    case 0x1F:  // string or binary: 2-byte length
      if (left < 2) return -1;
      skip = 2 + (((size_t)b[*at] << 8) | b[*at + 1]);
      if (left < skip) return -1;
      *at += skip;
      return 0;
    case 0x26:  // user property: two strings
      for (int k = 0; k < 2; k++) {
        left = n - *at;
        if (left < 2) return -1;
        skip = 2 + (((size_t)b[*at] << 8) | b[*at + 1]);
        if (left < skip) return -1;
        *at += skip;
      }
      return 0;
    default:
      return -1;
  }
}

// ---- I/O on one connection (TCP or TLS) -----------------------------------------------------

// >0 bytes read, 0 closed by the peer, -1 would block; fatal on errors.
static ssize_t conn_recv(Conn *c, uint8_t *buf, size_t n) {
  if (c->ssl == NULL) {
    for (;;) {
      ssize_t r = read(c->fd, buf, n);
      if (r >= 0) return r;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
      if (errno == ECONNRESET) fatal("%s: connection closed by the broker (reset)", c->label);
      fatal("%s: read: %s", c->label, strerror(errno));
    }
  }
  ERR_clear_error();
  int r = SSL_read(c->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
  if (r > 0) return r;
  int e = SSL_get_error(c->ssl, r);
  switch (e) {
    case SSL_ERROR_WANT_READ:
      return -1;
    case SSL_ERROR_WANT_WRITE:
      c->read_wants_write = 1;
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      return 0;
    case SSL_ERROR_SYSCALL:
      if (errno == EAGAIN || errno == EWOULDBLOCK) fatal("%s: read timed out", c->label);
      if (errno == 0 || errno == ECONNRESET) return 0;  // EOF without close_notify
      fatal("%s: TLS read: %s", c->label, strerror(errno));
    default:
      ssl_fatal("TLS read", c);
  }
}

// >0 bytes written, -1 would block; fatal on errors.
static ssize_t conn_send(Conn *c, const uint8_t *buf, size_t n) {
  if (c->ssl == NULL) {
    for (;;) {
      ssize_t w = send(c->fd, buf, n, MSG_NOSIGNAL);
      if (w >= 0) return w;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
      if (errno == EPIPE || errno == ECONNRESET) {
        fatal("%s: connection closed by the broker (write: %s)", c->label, strerror(errno));
      }
      fatal("%s: write: %s", c->label, strerror(errno));
    }
  }
  ERR_clear_error();
  int w = SSL_write(c->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
  if (w > 0) return w;
  int e = SSL_get_error(c->ssl, w);
  switch (e) {
    case SSL_ERROR_WANT_WRITE:
      return -1;
    case SSL_ERROR_WANT_READ:
      c->write_wants_read = 1;
      return -1;
    case SSL_ERROR_SYSCALL:
      if (errno == EAGAIN || errno == EWOULDBLOCK) fatal("%s: write timed out", c->label);
      fatal("%s: connection closed by the broker (TLS write: %s)", c->label,
            errno ? strerror(errno) : "EOF");
    default:
      ssl_fatal("TLS write", c);
  }
}

static void update_events(Conn *c) {
  uint32_t want = EPOLLIN;
  if (c->out_len > 0 || c->read_wants_write) want |= EPOLLOUT;
  if (want == c->registered || ep < 0) return;
  struct epoll_event ev = {.events = want, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) fatal("epoll_ctl: %s", strerror(errno));
  c->registered = want;
}

// Writes what the output buffer holds until the socket would block.
static void flush(Conn *c) {
  c->write_wants_read = 0;
  while (c->out_len > 0) {
    ssize_t w = conn_send(c, c->out + c->out_head, c->out_len);
    if (w < 0) break;
    c->out_head += (size_t)w;
    c->out_len -= (size_t)w;
    c->last_write_ns = now_ns();
  }
  if (c->out_len == 0) c->out_head = 0;
  update_events(c);
}

// Room for n more bytes at the end of the output buffer: where they go, or NULL when full.
// (Moving pending bytes is fine for TLS: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER.)
static uint8_t *out_reserve(Conn *c, size_t n) {
  if (c->out_cap - c->out_len < n) return NULL;
  if (c->out_cap - c->out_head - c->out_len < n) {
    memmove(c->out, c->out + c->out_head, c->out_len);
    c->out_head = 0;
  }
  uint8_t *p = c->out + c->out_head + c->out_len;
  c->out_len += n;
  return p;
}

static void queue_or_die(Conn *c, const uint8_t *bytes, size_t n) {
  uint8_t *p = out_reserve(c, n);
  if (p == NULL) fatal("%s: output buffer full (%zu bytes): the broker stopped reading", c->label, c->out_cap);
  memcpy(p, bytes, n);
}

// ---- Setup (blocking, with timeouts) --------------------------------------------------------

static void write_blocking(Conn *c, const uint8_t *b, size_t n) {
  while (n > 0) {
    ssize_t w = conn_send(c, b, n);
    if (w < 0) fatal("%s: write would block on a blocking socket", c->label);
    b += w;
    n -= (size_t)w;
  }
  c->last_write_ns = now_ns();
}

// Reads until one whole packet is in c->in; returns its type, body and length. The caller
// consumes it with consume().
static int read_packet_blocking(Conn *c, uint8_t *flags, const uint8_t **body, size_t *len) {
  for (;;) {
    size_t header;
    int f = frame(c->in, c->in_len, &header, len);
    if (f < 0) fatal("%s: malformed packet (Remaining Length over 4 bytes)", c->label);
    if (f > 0) {
      *flags = c->in[0] & 15;
      *body = c->in + header;
      return c->in[0] >> 4;
    }
    if (c->in_len == c->in_cap) fatal("%s: packet larger than %zu bytes", c->label, c->in_cap);
    ssize_t r = conn_recv(c, c->in + c->in_len, c->in_cap - c->in_len);
    if (r == 0) fatal("%s: connection closed by the broker while connecting", c->label);
    if (r < 0) fatal("%s: timed out after %d s waiting for the broker", c->label, SETUP_TIMEOUT_S);
    c->in_len += (size_t)r;
  }
}

static void consume(Conn *c, const uint8_t *body, size_t len) {
  size_t used = (size_t)(body - c->in) + len;
  memmove(c->in, c->in + used, c->in_len - used);
  c->in_len -= used;
}

static void dial(Conn *c) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
  int rc = getaddrinfo(host, port_s, &hints, &res);
  if (rc != 0) fatal("%s:%s: %s", host, port_s, gai_strerror(rc));
  int err = 0;
  c->fd = -1;
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    struct timeval tv = {.tv_sec = SETUP_TIMEOUT_S};
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
      fatal("setsockopt: %s", strerror(errno));
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      c->fd = fd;
      break;
    }
    err = errno;
    close(fd);
  }
  freeaddrinfo(res);
  if (c->fd < 0) fatal("%s: connect to %s:%s: %s", c->label, host, port_s, strerror(err));
  if (ssl_ctx == NULL) return;
  c->ssl = SSL_new(ssl_ctx);
  if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) ssl_fatal("SSL_new", c);
  const char *name = tls_name != NULL ? tls_name : host;
  unsigned char addr[16];
  int is_ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
  if (is_ip) {
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name) != 1) ssl_fatal("verify ip", c);
  } else if (SSL_set1_host(c->ssl, name) != 1 || SSL_set_tlsext_host_name(c->ssl, name) != 1) {
    ssl_fatal("verify host", c);
  }
  ERR_clear_error();
  int r = SSL_connect(c->ssl);
  if (r != 1) {
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      fatal("%s: TLS handshake timed out after %d s", c->label, SETUP_TIMEOUT_S);
    }
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
      fatal("%s: connection closed by the broker during the TLS handshake", c->label);
    }
    ssl_fatal("TLS handshake", c);
  }
}

static void mqtt_connect(Conn *c, const char *client_id) {
  uint8_t body[600], pkt[700];
  size_t n = put_str(body, "MQTT");
  body[n++] = (uint8_t)version;
  body[n++] = 0x02;  // Clean Start / Clean Session
  body[n++] = (uint8_t)(keepalive_s >> 8);
  body[n++] = (uint8_t)(keepalive_s & 0xff);
  if (version == 5) body[n++] = 0;  // no properties
  n += put_str(body + n, client_id);
  pkt[0] = 0x10;
  size_t h = 1 + put_varint(pkt + 1, n);
  memcpy(pkt + h, body, n);
  write_blocking(c, pkt, h + n);

  uint8_t flags;
  const uint8_t *b;
  size_t len;
  int type = read_packet_blocking(c, &flags, &b, &len);
  if (type != 2) fatal("%s: expected CONNACK, got packet type %d", c->label, type);
  if (len < 2) fatal("%s: CONNACK too short", c->label);
  if (b[1] != 0) fatal("%s: CONNACK refused the connection: reason code 0x%02x", c->label, b[1]);
  if (version == 5) {
    size_t at = 2;
    uint32_t plen;
    if (get_varint(b, len, &at, &plen) < 0 || plen > len - at) {
      fatal("%s: malformed CONNACK properties", c->label);
    }
    size_t end = at + plen;
    while (at < end) {
      uint32_t id, value;
      if (get_property(b, end, &at, &id, &value) < 0) {
        fatal("%s: malformed CONNACK property", c->label);
      }
      if (id == 0x21 && value > 0 && value < pub_window) pub_window = value;  // Receive Maximum
      if (id == 0x24 && (int)value < qos) {
        fatal("%s: the broker's Maximum QoS is %u, QoS %d asked", c->label, value, qos);
      }
      if (id == 0x27 && (max_packet == 0 || value < max_packet)) max_packet = value;
      if (id == 0x13) keepalive_s = (int)value;  // Server Keep Alive
    }
  }
  consume(c, b, len);
}

static void mqtt_subscribe(Conn *c, const char *filter) {
  uint8_t body[300], pkt[320];
  size_t n = 0;
  body[n++] = 0;
  body[n++] = 1;  // packet id 1
  if (version == 5) body[n++] = 0;
  n += put_str(body + n, filter);
  body[n++] = (uint8_t)qos;
  pkt[0] = 0x82;
  size_t h = 1 + put_varint(pkt + 1, n);
  memcpy(pkt + h, body, n);
  write_blocking(c, pkt, h + n);

  uint8_t flags;
  const uint8_t *b;
  size_t len;
  int type = read_packet_blocking(c, &flags, &b, &len);
  if (type != 9) fatal("%s: expected SUBACK, got packet type %d", c->label, type);
  size_t at = 2;
  if (len < 3 || b[0] != 0 || b[1] != 1) fatal("%s: SUBACK malformed or for another packet id", c->label);
  if (version == 5) {
    uint32_t plen;
    if (get_varint(b, len, &at, &plen) < 0 || plen > len - at) {
      fatal("%s: malformed SUBACK properties", c->label);
    }
    at += plen;
  }
  if (at >= len) fatal("%s: SUBACK without a reason code", c->label);
  if (b[at] >= 0x80) fatal("%s: SUBACK refused %s: 0x%02x", c->label, filter, b[at]);
  if (b[at] != qos) fatal("%s: SUBACK granted QoS %d, asked %d", c->label, b[at], qos);
  consume(c, b, len);
}

// The publisher's PUBLISH packet, built once; publish() patches packet id and payload header.
static void build_template(Conn *c) {
  char topic[32];
  snprintf(topic, sizeof topic, "bench/pair/%d", c->pair);
  size_t body = 2 + strlen(topic) + (qos ? 2 : 0) + (version == 5 ? 1 : 0) + payload;
  c->tmpl_len = 1 + varint_size(body) + body;
  if (max_packet != 0 && c->tmpl_len > max_packet) {
    fatal("PUBLISH of %zu bytes exceeds the broker's Maximum Packet Size %u", c->tmpl_len, max_packet);
  }
  c->tmpl = xmalloc(c->tmpl_len);
  uint8_t *p = c->tmpl;
  size_t n = 0;
  p[n++] = (uint8_t)(0x30 | (qos << 1));
  n += put_varint(p + n, body);
  n += put_str(p + n, topic);
  c->tmpl_id_at = n;
  if (qos) {
    p[n++] = 0;
    p[n++] = 0;
  }
  if (version == 5) p[n++] = 0;
  c->tmpl_payload_at = n;
  memset(p + n, 'a', payload);
  uint32_t pair = (uint32_t)c->pair;
  memcpy(p + n + 12, &pair, 4);
}

// ---- The run --------------------------------------------------------------------------------

static int in_window(uint64_t t) { return t >= warm_end_ns && t < win_end_ns; }

// One message from publisher c, sent at once; a skipped beat when its QoS 1 window or its output
// buffer is full.
static void publish(Conn *c) {
  if (qos == 1 && c->inflight >= pub_window) {
    c->skipped++;
    return;
  }
  uint8_t *p = out_reserve(c, c->tmpl_len);
  if (p == NULL) {
    c->skipped++;
    return;
  }
  memcpy(p, c->tmpl, c->tmpl_len);
  if (qos == 1) {
    p[c->tmpl_id_at] = (uint8_t)(c->next_id >> 8);
    p[c->tmpl_id_at + 1] = (uint8_t)(c->next_id & 0xff);
    c->next_id = c->next_id == 65535 ? 1 : c->next_id + 1;
    c->inflight++;
  }
  memcpy(p + c->tmpl_payload_at + 8, &c->seq, 4);
  c->seq++;
  c->sent++;
  uint64_t t = now_ns();
  memcpy(p + c->tmpl_payload_at, &t, 8);
  if (in_window(t)) window_sent++;
  flush(c);
}

static void on_publish(Conn *c, uint8_t flags, const uint8_t *b, size_t len, uint64_t t) {
  int q = (flags >> 1) & 3;
  if (q != qos) fatal("%s: delivery at QoS %d, subscribed at %d", c->label, q, qos);
  if (len < 2) fatal("%s: malformed PUBLISH", c->label);
  size_t at = 2 + (((size_t)b[0] << 8) | b[1]);
  uint8_t id[2] = {0, 0};
  if (q) {
    if (at + 2 > len) fatal("%s: malformed PUBLISH", c->label);
    id[0] = b[at];
    id[1] = b[at + 1];
    at += 2;
  }
  if (version == 5) {
    uint32_t plen;
    if (get_varint(b, len, &at, &plen) < 0 || plen > len - at) {
      fatal("%s: malformed PUBLISH properties", c->label);
    }
    at += plen;
  }
  if (at > len || len - at < MIN_PAYLOAD) fatal("%s: PUBLISH payload under 16 bytes", c->label);
  uint64_t sent_at;
  uint32_t seq, pair;
  memcpy(&sent_at, b + at, 8);
  memcpy(&seq, b + at + 8, 4);
  memcpy(&pair, b + at + 12, 4);
  if (pair != (uint32_t)c->pair) fatal("%s: got a message of pair %u", c->label, pair);
  if ((int64_t)seq <= c->last_seq) c->duplicates++;
  else c->last_seq = seq;
  c->received++;
  if (in_window(t)) {
    window_received++;
    if (nlat < caplat) {
      lat[nlat] = t - sent_at;
      if (lat_send != NULL) lat_send[nlat] = sent_at;
      nlat++;
    } else {
      dropped_samples++;
    }
  }
  if (q == 1) {
    uint8_t ack[4] = {0x40, 2, id[0], id[1]};
    queue_or_die(c, ack, 4);
  }
}

static void on_packet(Conn *c, uint8_t first, const uint8_t *b, size_t len, uint64_t t) {
  int type = first >> 4;
  switch (type) {
    case 3:
      if (c->role != SUB) fatal("%s: unexpected PUBLISH", c->label);
      on_publish(c, first & 15, b, len, t);
      return;
    case 4:
      if (c->role != PUB || len < 2) fatal("%s: unexpected PUBACK", c->label);
      if (version == 5 && len >= 3 && b[2] >= 0x80) {
        fatal("%s: PUBACK with reason code 0x%02x", c->label, b[2]);
      }
      if (c->inflight == 0) fatal("%s: PUBACK with nothing in flight", c->label);
      c->inflight--;
      c->acked++;
      return;
    case 13:  // PINGRESP
      return;
    case 14:
      fatal("%s: DISCONNECT from the broker, reason code 0x%02x", c->label, len > 0 ? b[0] : 0);
    default:
      fatal("%s: unexpected packet type %d", c->label, type);
  }
}

// Everything the socket has (TLS: until OpenSSL's buffer is empty too, since epoll cannot see it).
static void on_readable(Conn *c) {
  c->read_wants_write = 0;
  for (;;) {
    if (c->in_len == c->in_cap) fatal("%s: packet larger than %zu bytes", c->label, c->in_cap);
    size_t space = c->in_cap - c->in_len;
    ssize_t r = conn_recv(c, c->in + c->in_len, space);
    if (r < 0) break;
    if (r == 0) fatal("%s: connection closed by the broker", c->label);
    uint64_t t = now_ns();
    c->in_len += (size_t)r;
    size_t at = 0;
    for (;;) {
      size_t header, len;
      int f = frame(c->in + at, c->in_len - at, &header, &len);
      if (f < 0) fatal("%s: malformed packet (Remaining Length over 4 bytes)", c->label);
      if (f == 0) break;
      on_packet(c, c->in[at], c->in + at + header, len, t);
      at += header + len;
    }
    if (at > 0) {
      memmove(c->in, c->in + at, c->in_len - at);
      c->in_len -= at;
    }
    // A short read emptied the socket; epoll (level-triggered) reports what comes next. TLS
    // goes on while OpenSSL holds bytes of its own, which epoll cannot see.
    if (c->ssl != NULL ? !SSL_has_pending(c->ssl) : (size_t)r < space) break;
  }
  if (c->out_len > 0) flush(c);
  else update_events(c);
}

static void set_timer(int tfd, uint64_t at) {
  struct itimerspec its = {0};
  its.it_value.tv_sec = (time_t)(at / 1000000000ull);
  its.it_value.tv_nsec = (long)(at % 1000000000ull);
  if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
  if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) fatal("timerfd: %s", strerror(errno));
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

// Nearest rank, as tests/bench/stats.ts's percentile().
static double pct_us(double p) {
  if (nlat == 0) return 0;
  double rank = p * (double)nlat / 100.0 - 1e-9;
  size_t r = (size_t)rank;
  if ((double)r < rank) r++;
  if (r < 1) r = 1;
  if (r > nlat) r = nlat;
  return (double)lat[r - 1] / 1000.0;
}

static void usage(void) {
  fputs(
      "usage: paced_probe --port P --rate MSG_PER_S --window S [options]\n"
      "  --host H          broker address (default 127.0.0.1)\n"
      "  --pairs N         publisher/subscriber pairs (default 16, at most 1024)\n"
      "  --rate R          messages per second over all publishers\n"
      "  --qos 0|1         (default 0)\n"
      "  --mqtt 5|3.1.1    protocol level (default 5; 4 means 3.1.1)\n"
      "  --warmup S        load before the window (default 0)\n"
      "  --window S        measured window\n"
      "  --drain S         longest wait for in-flight messages after the window (default 2)\n"
      "  --payload B       payload bytes, 16 to 4 MiB (default 64)\n"
      "  --ca FILE         TLS, verifying the server against this CA (PEM)\n"
      "  --tls-name NAME   name or IP the certificate must carry (default: --host)\n"
      "  --id-prefix P     client ids P-pub-i, P-sub-i (default: probe-<pid>-<time>)\n"
      "  --keepalive S     MQTT keep alive (default 60; 0 = off)\n"
      "  --dump FILE       write 'send_ns latency_ns' per sample of the window\n"
      "  --raw             no MQTT handshake: a 2-byte hello (role, pair) for floor.ts's forwarder\n",
      stderr);
  exit(2);
}

static double num_arg(const char *name, const char *s, double lo, double hi) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
    fprintf(stderr, "paced_probe: --%s needs a number in [%g, %g], got '%s'\n", name, lo, hi, s);
    usage();
  }
  return v;
}

int main(int argc, char **argv) {
  static const struct option longs[] = {
      {"host", required_argument, 0, 'h'},      {"port", required_argument, 0, 'p'},
      {"pairs", required_argument, 0, 'n'},     {"rate", required_argument, 0, 'r'},
      {"qos", required_argument, 0, 'q'},       {"mqtt", required_argument, 0, 'm'},
      {"warmup", required_argument, 0, 'w'},    {"window", required_argument, 0, 'W'},
      {"drain", required_argument, 0, 'd'},     {"payload", required_argument, 0, 'b'},
      {"ca", required_argument, 0, 'c'},        {"tls-name", required_argument, 0, 't'},
      {"id-prefix", required_argument, 0, 'i'}, {"keepalive", required_argument, 0, 'k'},
      {"dump", required_argument, 0, 'D'},      {"raw", no_argument, 0, 'R'},
      {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", longs, NULL)) != -1) {
    switch (opt) {
      case 'h': host = optarg; break;
      case 'p': port_s = optarg; num_arg("port", optarg, 1, 65535); break;
      case 'n': pairs = (int)num_arg("pairs", optarg, 1, MAX_PAIRS); break;
      case 'r': rate = num_arg("rate", optarg, 0.001, 1e7); break;
      case 'q': qos = (int)num_arg("qos", optarg, 0, 1); break;
      case 'm':
        if (strcmp(optarg, "5") == 0) version = 5;
        else if (strcmp(optarg, "4") == 0 || strcmp(optarg, "3.1.1") == 0) version = 4;
        else usage();
        break;
      case 'w': warmup_s = num_arg("warmup", optarg, 0, 86400); break;
      case 'W': window_s = num_arg("window", optarg, 0.001, 86400); break;
      case 'd': drain_s = num_arg("drain", optarg, 0, 3600); break;
      case 'b': payload = (size_t)num_arg("payload", optarg, MIN_PAYLOAD, MAX_PAYLOAD); break;
      case 'c': ca_file = optarg; break;
      case 't': tls_name = optarg; break;
      case 'i': id_prefix = optarg; break;
      case 'k': keepalive_s = (int)num_arg("keepalive", optarg, 0, 65535); break;
      case 'D': dump_file = optarg; break;
      case 'R': raw = 1; break;
      default: usage();
    }
  }
  if (optind != argc || port_s == NULL || rate <= 0 || window_s <= 0) usage();
  if (rate * window_s > MAX_SAMPLES) {
    fprintf(stderr, "paced_probe: rate x window over %u messages\n", MAX_SAMPLES);
    usage();
  }
  char default_prefix[64];
  if (id_prefix == NULL) {
    snprintf(default_prefix, sizeof default_prefix, "probe-%d-%" PRIu64, (int)getpid(), now_ns());
    id_prefix = default_prefix;
  }
  if (strlen(id_prefix) > 200) fatal("--id-prefix is too long");
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);

  if (ca_file != NULL) {
    ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (ssl_ctx == NULL) ssl_fatal("SSL_CTX_new", NULL);
    SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(ssl_ctx, ca_file, NULL) != 1) {
      ssl_fatal("cannot load the CA file", NULL);
    }
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  }

  // Buffers: one packet must fit the input; the output holds a few packets (more for QoS 1
  // subscribers, whose PUBACKs are 4 bytes each).
  size_t packet_max = payload + 1024;
  size_t in_cap = packet_max * 2 > 65536 ? packet_max * 2 : 65536;
  size_t out_cap = packet_max * 4 > 262144 ? packet_max * 4 : 262144;
  conns = calloc((size_t)(2 * pairs), sizeof *conns);
  if (conns == NULL) fatal("out of memory");

  // Subscribers connect and subscribe before their publishers.
  for (int i = 0; i < pairs; i++) {
    for (int role = SUB; role >= PUB; role--) {
      Conn *c = &conns[2 * i + role];
      c->role = role;
      c->pair = i;
      c->last_seq = -1;
      c->next_id = 1;
      snprintf(c->label, sizeof c->label, "%s %d", role == SUB ? "sub" : "pub", i);
      c->in_cap = in_cap;
      c->in = xmalloc(in_cap);
      c->out_cap = out_cap;
      c->out = xmalloc(out_cap);
      dial(c);
      if (raw) {
        uint8_t hello[2] = {(uint8_t)role, (uint8_t)i};
        write_blocking(c, hello, 2);
      } else {
        char id[256];
        snprintf(id, sizeof id, "%s-%s-%d", id_prefix, role == SUB ? "sub" : "pub", i);
        mqtt_connect(c, id);
        if (role == SUB) {
          char filter[32];
          snprintf(filter, sizeof filter, "bench/pair/%d", i);
          mqtt_subscribe(c, filter);
        }
      }
    }
  }
  for (int i = 0; i < pairs; i++) build_template(&conns[2 * i]);

  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) fatal("epoll_create1: %s", strerror(errno));
  for (int k = 0; k < 2 * pairs; k++) {
    Conn *c = &conns[k];
    int fl = fcntl(c->fd, F_GETFL);
    if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0) fatal("fcntl: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) fatal("epoll_ctl: %s", strerror(errno));
    c->registered = EPOLLIN;
  }
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd < 0) fatal("timerfd_create: %s", strerror(errno));
  struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0) fatal("epoll_ctl: %s", strerror(errno));

  // Message k is due at start + k / rate, from publisher k mod pairs: each publisher sends every
  // pairs / rate seconds, the publishers evenly staggered.
  uint64_t start = now_ns() + 20000000ull;
  warm_end_ns = start + (uint64_t)(warmup_s * 1e9);
  win_end_ns = warm_end_ns + (uint64_t)(window_s * 1e9);
  caplat = (size_t)(rate * window_s * 1.25) + 4096;
  lat = xmalloc(caplat * sizeof *lat);
  if (dump_file != NULL) lat_send = xmalloc(caplat * sizeof *lat_send);
  double interval = 1e9 / rate;
  uint64_t k = 0, next = start;
  int phase = 0;  // 0 warm-up, 1 window, 2 drain
  uint64_t cpu_start = 0, cpu_end = 0, drain_end = 0, next_ping_check = start;
  set_timer(tfd, next);
  uint64_t armed = next;
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(ep, evs, 64, 100);
    if (n < 0) {
      if (errno == EINTR) continue;
      fatal("epoll_wait: %s", strerror(errno));
    }
    for (int e = 0; e < n; e++) {
      Conn *c = evs[e].data.ptr;
      if (c == NULL) {
        uint64_t expirations;
        if (read(tfd, &expirations, 8) < 0 && errno != EAGAIN) fatal("timerfd: %s", strerror(errno));
        continue;
      }
      uint32_t ev = evs[e].events;
      if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
      if (ev & EPOLLOUT) {
        if (c->read_wants_write) on_readable(c);
        flush(c);
      }
      if (c->write_wants_read && (ev & EPOLLIN)) flush(c);
      if ((ev & EPOLLERR) != 0) {
        int err = 0;
        socklen_t sl = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        fatal("%s: socket error: %s", c->label, err ? strerror(err) : "unknown");
      }
    }
    uint64_t t = now_ns();
    while (phase < 2 && next <= t && next < win_end_ns) {
      publish(&conns[2 * (k % (uint64_t)pairs)]);
      k++;
      next = start + (uint64_t)((double)k * interval);
    }
    t = now_ns();
    if (phase == 0 && t >= warm_end_ns) {
      phase = 1;
      cpu_start = cpu_ns();
      puts("window-start");
    }
    if (phase == 1 && t >= win_end_ns) {
      phase = 2;
      cpu_end = cpu_ns();
      puts("window-end");
      drain_end = t + (uint64_t)(drain_s * 1e9);
    }
    if (phase == 2) {
      int done = 1;
      for (int i = 0; i < pairs && done; i++) {
        const Conn *p = &conns[2 * i], *s = &conns[2 * i + 1];
        if (s->received - s->duplicates < p->sent || (qos == 1 && p->acked < p->sent)) done = 0;
      }
      if (done || t >= drain_end) break;
    }
    if (keepalive_s > 0 && t >= next_ping_check) {
      next_ping_check = t + 100000000ull;
      uint64_t idle = (uint64_t)keepalive_s * 500000000ull;  // half the keep alive
      for (int i = 0; i < 2 * pairs; i++) {
        Conn *c = &conns[i];
        if (!raw && t - c->last_write_ns >= idle) {
          static const uint8_t ping[2] = {0xc0, 0};
          queue_or_die(c, ping, 2);
          c->last_write_ns = t;
          flush(c);
        }
      }
    }
    uint64_t due = phase == 0 ? (next < warm_end_ns ? next : warm_end_ns)
                   : phase == 1 ? (next < win_end_ns ? next : win_end_ns)
                                : t + 5000000ull;
    // Re-arm only when the deadline moved (a wake-up for a delivery leaves it as it was).
    if (due != armed || due <= t) {
      set_timer(tfd, due);
      armed = due;
    }
  }

  // Goodbye: DISCONNECT on every connection, best effort.
  uint64_t sent = 0, received = 0, acked = 0, skipped = 0, duplicates = 0;
  for (int i = 0; i < 2 * pairs; i++) {
    Conn *c = &conns[i];
    sent += c->sent;
    received += c->received;
    acked += c->acked;
    skipped += c->skipped;
    duplicates += c->duplicates;
    if (!raw) {
      static const uint8_t bye[2] = {0xe0, 0};
      uint8_t *p = out_reserve(c, 2);
      if (p != NULL) {
        memcpy(p, bye, 2);
        flush(c);
      }
    }
    if (c->ssl != NULL) {
      SSL_shutdown(c->ssl);
      SSL_free(c->ssl);
    }
    close(c->fd);
  }
  if (received - duplicates < sent) {
    fprintf(stderr, "paced_probe: %" PRIu64 " of %" PRIu64 " messages undelivered after a %.1f s drain\n",
            sent - (received - duplicates), sent, drain_s);
  }
  if (dump_file != NULL) {
    FILE *f = fopen(dump_file, "w");
    if (f == NULL) fatal("%s: %s", dump_file, strerror(errno));
    for (size_t i = 0; i < nlat; i++) fprintf(f, "%" PRIu64 " %" PRIu64 "\n", lat_send[i], lat[i]);
    if (fclose(f) != 0) fatal("%s: %s", dump_file, strerror(errno));
  }
  qsort(lat, nlat, sizeof *lat, cmp_u64);
  printf("{\"count\":%zu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,"
         "\"sent\":%" PRIu64 ",\"received\":%" PRIu64 ",\"acked\":%" PRIu64 ",\"duplicates\":%" PRIu64
         ",\"skipped\":%" PRIu64 ",\"window_s\":%.6f,\"window_sent\":%" PRIu64
         ",\"window_received\":%" PRIu64 ",\"cpu_us\":%.1f,\"dropped_samples\":%zu,\"receive_maximum\":%u}\n",
         nlat, pct_us(50), pct_us(90), pct_us(99), pct_us(99.9), nlat ? (double)lat[nlat - 1] / 1000.0 : 0,
         sent, received, acked, duplicates, skipped, (double)(win_end_ns - warm_end_ns) / 1e9,
         window_sent, window_received, (double)(cpu_end - cpu_start) / 1000.0, dropped_samples,
         pub_window);
  return 0;
}
