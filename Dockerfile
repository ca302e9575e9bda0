# The apt-proxy image: one statically linked binary and the CA certificates, FROM scratch.
#
#   docker build -t apt-proxy .        (or: podman build --format docker -t apt-proxy .)
#
# compiles the binary in a Rust build stage. scripts/release.sh builds the same image from the
# static binary it has already built and tested (no compiler in the image build, no base image to
# pull): it stages the binary, the CA bundle and an empty directory, then runs
#
#   buildah bud --format docker --build-arg BINARY=prebuilt -f Dockerfile <staging dir>
#
# Use --format docker with buildah/podman: the OCI format drops HEALTHCHECK.
ARG BINARY=source

# ---- the binary, compiled here (the default)
FROM docker.io/library/rust:1-bookworm AS source
WORKDIR /src
COPY . .
RUN set -eu; \
    triple="$(uname -m)-unknown-linux-gnu"; \
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked --target "$triple" --bin apt-proxy; \
    mkdir -p /out/empty; \
    cp "target/$triple/release/apt-proxy" /out/apt-proxy; \
    cp /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

# ---- the binary, built beforehand (context: apt-proxy, ca-certificates.crt, empty/)
FROM scratch AS prebuilt
COPY apt-proxy ca-certificates.crt /out/
COPY empty/ /out/empty/

FROM ${BINARY} AS binary

# ---- the image
FROM scratch
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="apt-proxy" \
      org.opencontainers.image.description="Caching proxy for APT, YUM/DNF and APK package managers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/apt-proxy /usr/bin/apt-proxy
# The cache (a volume) and the temp dir (S3 upload spools) belong to the unprivileged user.
COPY --from=binary --chown=65532:65532 /out/empty/ /app/.aptcache/
COPY --from=binary --chown=65532:65532 /out/empty/ /tmp/
# The default cache directory, ./.aptcache, is the volume: a mounted apt-proxy.yaml may still
# set cache.dir (no APT_PROXY_CACHEDIR here, which would override it).
WORKDIR /app
USER 65532:65532
EXPOSE 3142
VOLUME ["/app/.aptcache"]
# The probe reads the same APT_PROXY_* environment as the server: set the port with
# APT_PROXY_PORT (not a --port argument) so that it asks the right one.
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s --retries=3 \
    CMD ["/usr/bin/apt-proxy", "--health-check"]
ENTRYPOINT ["/usr/bin/apt-proxy"]
