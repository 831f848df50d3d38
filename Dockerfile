# mcloudtt as a scratch image: the `deno compile`d binary, exactly the shared libraries it links
# against (found with ldd), a CA bundle, /etc/passwd + /etc/group for uid 65532, a writable /tmp,
# and nothing else: no shell, no package manager.
#
#   docker build -t mcloudtt .
#   docker run --rm -v "$PWD/certs:/data/certs:ro" -p 1883:1883 -p 8080:8080 -p 8888:8888 mcloudtt
#
# The same image runs the broker (`serve`, the default) and the BigQuery adapter (`bq-adapter`).
# tests/infra/container_test.ts assembles the final stage's file tree with the assembly RUN below
# and runs the program from it as uid 65532; keep that step self-contained (ROOTFS, BINARY, SKEL).

FROM denoland/deno:debian-2.9.6 AS build
# The debian base image has no CA bundle; the scratch image needs one for outbound TLS
# (BigQuery, Google's token endpoint, a Redis with TLS).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY deno.json deno.lock ./
# Dependencies first (a layer that survives source changes); --frozen fails on a stale deno.lock.
RUN deno install --frozen
COPY main.ts mod.ts ./
COPY src ./src
# The compile task holds the one list of permissions baked into the binary.
RUN deno task compile

ARG ROOTFS=/rootfs
ARG SKEL=/skel
ARG BINARY=/src/dist/mcloudtt
# Final-stage file tree. Only writes below $ROOTFS and $SKEL.
RUN set -eu; : "${ROOTFS:?}" "${SKEL:?}" "${BINARY:?}"; \
    if ldd "$BINARY" | grep -q 'not found'; then ldd "$BINARY"; exit 1; fi; \
    mkdir -p "$ROOTFS/etc/ssl/certs" "$ROOTFS/tmp" "$SKEL/data"; \
    ldd "$BINARY" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | sort -u \
      | xargs -I{} cp --parents -L {} "$ROOTFS/"; \
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/"; \
    printf 'mcloudtt:x:65532:65532:mcloudtt:/data:/sbin/nologin\n' > "$ROOTFS/etc/passwd"; \
    printf 'mcloudtt:x:65532:\n' > "$ROOTFS/etc/group"; \
    printf 'hosts: files dns\n' > "$ROOTFS/etc/nsswitch.conf"; \
    chmod 755 "$ROOTFS"; \
    chmod 1777 "$ROOTFS/tmp"; \
    chown 65532:65532 "$SKEL/data"

FROM scratch
COPY --from=build /rootfs/ /
# /data is the working directory: relative paths in the config (certs/, the storage directory)
# resolve below it, and it is the one place uid 65532 may write.
COPY --from=build --chown=65532:65532 /skel/data /data
COPY --from=build /src/dist/mcloudtt /mcloudtt
# A production container never mints its own CA: without mounted certificates the broker exits 2
# and names the files to mount (/data/certs/broker/broker.crt, broker.key, /data/certs/ca.crt),
# unless the TLS paths are pointed elsewhere (MCLOUDTT_TLS_CERTFILE, ...; see infra/k8s).
ENV MCLOUDTT_TLS_GENERATE_DEV_CERTS=false \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    TMPDIR=/tmp \
    HOME=/data
USER 65532:65532
WORKDIR /data
# MQTT over TLS, secure WebSocket, HTTP (health, readiness, metrics).
EXPOSE 1883 8080 8888
ENTRYPOINT ["/mcloudtt"]
CMD ["serve"]
