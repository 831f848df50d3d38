# mcloudtt as a scratch image: the `deno compile`d binary plus exactly the shared libraries it
# links against (found with ldd), nothing else.
FROM denoland/deno:debian-2.9.6 AS build
WORKDIR /src
COPY deno.json deno.lock ./
COPY main.ts mod.ts ./
COPY src ./src
RUN deno compile --frozen --allow-net --allow-read --allow-write=certs,data --allow-env --allow-sys \
      --output /out/mcloudtt main.ts
# Copy every library the binary links (and the dynamic loader) into a root for the final stage.
RUN mkdir -p /rootfs/etc/ssl/certs /rootfs/data/certs /rootfs/tmp \
 && ldd /out/mcloudtt | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | sort -u \
      | xargs -I{} cp --parents -L {} /rootfs/ \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
 && echo "mcloudtt:x:65532:65532::/data:/mcloudtt" > /rootfs/etc/passwd \
 && chown -R 65532:65532 /rootfs/data

FROM scratch
COPY --from=build /rootfs/ /
COPY --from=build /out/mcloudtt /mcloudtt
USER 65532:65532
WORKDIR /data
# MQTT over TLS, secure WebSocket. Mount certificates at /data/certs (see infra/).
EXPOSE 1883 8080
ENTRYPOINT ["/mcloudtt"]
CMD ["serve"]
