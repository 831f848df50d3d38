// Non-blocking I/O on one connection of paced_probe, TCP or TLS: reads, writes through the
// connection's bounded output buffer, and the epoll events it asks for. Errors are fatal: the
// probe ends with a message naming the connection.
#include "probe.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

// OpenSSL's reason for the last failure (and the certificate's, when verification failed).
void ssl_fatal(const char *what, const Conn *c) {
  char buf[256] = "";
  unsigned long e = ERR_get_error();
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  if (c != NULL && c->ssl != NULL && SSL_get_verify_result(c->ssl) != X509_V_OK) {
    fatal("%s: %s: %s (certificate: %s)", c->label, what, buf,
          X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
  }
  fatal("%s: %s: %s", c != NULL ? c->label : "tls", what, buf[0] ? buf : "(no detail)");
}

// >0 bytes read, 0 closed by the peer, -1 would block; fatal on errors.
ssize_t conn_recv(Conn *c, uint8_t *buf, size_t n) {
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
ssize_t conn_send(Conn *c, const uint8_t *buf, size_t n) {
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

void update_events(Conn *c) {
  uint32_t want = EPOLLIN;
  if (c->out_len > 0 || c->read_wants_write) want |= EPOLLOUT;
  if (want == c->registered || ep < 0) return;
  struct epoll_event ev = {.events = want, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) fatal("epoll_ctl: %s", strerror(errno));
  c->registered = want;
}

// Writes what the output buffer holds until the socket would block.
void flush(Conn *c) {
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
uint8_t *out_reserve(Conn *c, size_t n) {
  if (c->out_cap - c->out_len < n) return NULL;
  if (c->out_cap - c->out_head - c->out_len < n) {
    memmove(c->out, c->out + c->out_head, c->out_len);
    c->out_head = 0;
  }
  uint8_t *p = c->out + c->out_head + c->out_len;
  c->out_len += n;
  return p;
}

void queue_or_die(Conn *c, const uint8_t *bytes, size_t n) {
  uint8_t *p = out_reserve(c, n);
  if (p == NULL) fatal("%s: output buffer full (%zu bytes): the broker stopped reading", c->label, c->out_cap);
  memcpy(p, bytes, n);
}
