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
// Files (all in this directory, compiled together):
//   paced_probe.c  the program: options, the paced run loop, percentiles, the result line
//   traffic.c      the run's traffic on one connection: PUBLISH, deliveries (samples), PUBACKs
//   conn_setup.c   setting up one connection, blocking: dial, TLS, CONNECT, SUBSCRIBE
//   conn_io.c      non-blocking I/O on one connection (TCP or TLS), its output buffer, epoll
//   mqtt_codec.c   MQTT encoding and decoding: varints, strings, framing, properties
//   probe.h        what they share: the connection type, the globals below, prototypes
//
// Build: cc -O2 -Wall -Wextra -o paced_probe *.c -lssl -lcrypto
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <openssl/err.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

// The globals probe.h declares.

// Options.
const char *host = "127.0.0.1";
const char *port_s = NULL;
const char *ca_file = NULL;
const char *tls_name = NULL;
const char *id_prefix = NULL;
const char *dump_file = NULL;
int pairs = 16, qos = 0, version = 5, raw = 0, keepalive_s = 60;
double rate = 0, warmup_s = 0, window_s = 0, drain_s = 2;
size_t payload = 64;

SSL_CTX *ssl_ctx;
Conn *conns;  // 2 * pairs: pub of pair i at 2i, sub at 2i + 1
int ep = -1;
uint32_t pub_window = QOS1_WINDOW;
uint32_t max_packet = 0;  // broker's Maximum Packet Size (0: none)

// Measurement.
uint64_t warm_end_ns, win_end_ns;
uint64_t *lat, *lat_send;
size_t nlat, caplat, dropped_samples;
uint64_t window_sent, window_received;

void fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("paced_probe: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static uint64_t cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (p == NULL) fatal("out of memory (%zu bytes)", n);
  return p;
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
