// Setting up one connection of paced_probe, blocking with timeouts (SETUP_TIMEOUT_S per step,
// SO_RCVTIMEO/SO_SNDTIMEO): dial (TCP_NODELAY; TLS handshake with the server certificate
// verified), CONNECT and CONNACK (taking the broker's limits), SUBSCRIBE and SUBACK, and the
// publisher's PUBLISH template. main() makes the sockets non-blocking afterwards.
#include "probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

void write_blocking(Conn *c, const uint8_t *b, size_t n) {
  while (n > 0) {
    ssize_t w = conn_send(c, b, n);
    if (w < 0) fatal("%s: write would block on a blocking socket", c->label);
    b += w;
    n -= (size_t)w;
  }
  c->last_write_ns = now_ns();
}

// One setup packet: fixed header byte `first`, Remaining Length, `body` (at most 600 bytes).
static void send_packet_blocking(Conn *c, uint8_t first, const uint8_t *body, size_t n) {
  uint8_t pkt[608];
  if (n > 600) fatal("%s: setup packet of %zu bytes is too large", c->label, n);
  pkt[0] = first;
  size_t h = 1 + put_varint(pkt + 1, n);
  memcpy(pkt + h, body, n);
  write_blocking(c, pkt, h + n);
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

void dial(Conn *c) {
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

// Sends one setup packet and reads the reply, which must be of type `want` (`name`); returns
// its body (`*len` bytes), to be released with consume().
static const uint8_t *exchange(Conn *c, uint8_t first, const uint8_t *body, size_t n, int want,
                               const char *name, size_t *len) {
  send_packet_blocking(c, first, body, n);
  uint8_t flags;
  const uint8_t *b;
  int type = read_packet_blocking(c, &flags, &b, len);
  if (type != want) fatal("%s: expected %s, got packet type %d", c->label, name, type);
  return b;
}

void mqtt_connect(Conn *c, const char *client_id) {
  uint8_t body[600];
  size_t n = put_str(body, "MQTT");
  body[n++] = (uint8_t)version;
  body[n++] = 0x02;  // Clean Start / Clean Session
  body[n++] = (uint8_t)(keepalive_s >> 8);
  body[n++] = (uint8_t)(keepalive_s & 0xff);
  if (version == 5) body[n++] = 0;  // no properties
  n += put_str(body + n, client_id);
  size_t len;
  const uint8_t *b = exchange(c, 0x10, body, n, 2, "CONNACK", &len);
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

void mqtt_subscribe(Conn *c, const char *filter) {
  uint8_t body[300];
  size_t n = 0;
  body[n++] = 0;
  body[n++] = 1;  // packet id 1
  if (version == 5) body[n++] = 0;
  n += put_str(body + n, filter);
  body[n++] = (uint8_t)qos;
  size_t len;
  const uint8_t *b = exchange(c, 0x82, body, n, 9, "SUBACK", &len);
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
void build_template(Conn *c) {
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
