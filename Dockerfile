# sova-relay, compiled inside Docker (multi-stage: the Rust toolchain stays in the build
# stage; the image holds the binary on a distroless base with glibc, no shell, no curl).
#
#   docker build -t sova-relay .
#   docker run -d --name sova-relay -p 9090:9090 sova-relay
#
# Compiling needs memory: about 850 MiB at its peak with two jobs, 660 MiB with one (the
# README's "Building on a small server" has the measurements). On a small VPS, build the
# binary on the host and use Dockerfile.prebuilt, or pass --build-arg BUILD_JOBS=1.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Parallel rustc processes; empty means one per core. 1 keeps the peak memory lowest.
ARG BUILD_JOBS=
# The whole workspace (cargo needs every member's manifest); .dockerignore keeps target/,
# .git and the fuzzers out.
COPY . .
RUN cargo build --release --locked -p sova-relay ${BUILD_JOBS:+--jobs "$BUILD_JOBS"} \
 && install -D -m 0755 target/release/sova-relay /out/sova-relay

# Debian 12's glibc and libgcc_s, what the binary links against; `nonroot` is uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sova-relay /usr/local/bin/sova-relay
USER 65532:65532
EXPOSE 9090
# What the relay takes as "tell every instance, flush, exit 0" (within --shutdown-timeout,
# 5 s by default: well inside `docker stop`'s 10 s).
STOPSIGNAL SIGTERM
# The relay's own binary asks GET /healthz on its port. Without --addr it checks the relay
# this environment describes (SOVA_PORT, SOVA_HTTP, SOVA_CONFIG), so a changed port or
# `SOVA_HTTP=false` (then a TCP connect) needs no change here.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/sova-relay", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sova-relay"]
