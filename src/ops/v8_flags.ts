/**
 * The V8 flags the broker ships with: `deno task start`/`dev` and `deno task compile` (baked into
 * the binary, so the Dockerfile's image too) pass exactly these, and the bench runs mcloudtt with
 * them (tests/ops/v8_flags_test.ts checks that they agree).
 *
 * `--initial-old-space-size=64`: V8 starts a major collection (mark-compact) when the old
 * generation reaches a limit it sets from the live heap, and a mark-compact stalls deliveries for
 * 5-12 ms on this runtime. A broker's live heap is small (6.7 MiB idle), while the objects a busy
 * broker promotes arrive at a steady rate (0.6 MB/s at 10k QoS 1 messages/s over TLS), so with
 * the default limit (live heap plus ~8 MB) mark-compacts came every 7-8 s. In this V8 the flag
 * also sets the least the limit can be after a collection (measured: with 32, mark-compacts came
 * at 29-30 MB again and again), so the old generation may grow to 64 MB before one: every ~85 s
 * at that load. It costs resident memory under load only, at most that much; a broker whose live
 * heap is larger gets V8's own limits (issue 14).
 */
export const V8_FLAGS: readonly string[] = ["--initial-old-space-size=64"];

/** The flags as one `deno run` / `deno compile` argument. */
export const V8_FLAGS_ARG = `--v8-flags=${V8_FLAGS.join(",")}`;
