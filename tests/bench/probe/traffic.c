// The run's traffic on one connection of paced_probe: a publisher's paced PUBLISH (stamped with
// the send time), and everything that arrives: a subscriber's deliveries (the latency samples,
// acknowledged at once at QoS 1), a publisher's PUBACKs.
#include "probe.h"

#include <string.h>

static int in_window(uint64_t t) { return t >= warm_end_ns && t < win_end_ns; }

// One message from publisher c, sent at once; a skipped beat when its QoS 1 window or its output
// buffer is full.
void publish(Conn *c) {
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
void on_readable(Conn *c) {
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
