// MQTT encoding and decoding for paced_probe: varints, strings, the fixed header's framing and
// MQTT 5 properties. Pure functions over byte buffers; bounds are checked by the decoders.
#include "probe.h"

#include <string.h>

size_t put_varint(uint8_t *p, size_t n) {
  size_t i = 0;
  do {
    uint8_t b = n & 0x7f;
    n >>= 7;
    if (n) b |= 0x80;
    p[i++] = b;
  } while (n);
  return i;
}

size_t varint_size(size_t n) { return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4; }

size_t put_str(uint8_t *p, const char *s) {
  size_t n = strlen(s);
  p[0] = (uint8_t)(n >> 8);
  p[1] = (uint8_t)(n & 0xff);
  memcpy(p + 2, s, n);
  return n + 2;
}

// The fixed header of the packet at p[0..n): 1 complete (header and body length set), 0 more
// bytes needed, -1 malformed (a Remaining Length longer than 4 bytes).
int frame(const uint8_t *p, size_t n, size_t *header, size_t *len) {
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
int get_varint(const uint8_t *b, size_t n, size_t *at, uint32_t *out) {
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
int get_property(const uint8_t *b, size_t n, size_t *at, uint32_t *id, uint32_t *value) {
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
