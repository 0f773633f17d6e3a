# syntax=docker/dockerfile:1
# flipgate's container image: the release binary on a distroless base.
#
#   docker build -t flipgate:0.1.0 .                                  # file state backend
#   docker build --build-arg FEATURES=etcd -t flipgate:0.1.0-etcd .   # + the etcd backend
#   docker run --rm --read-only -p 8080:8080 -v /srv/flipgate:/etc/flipgate:ro \
#     -v flipgate-state:/var/lib/flipgate flipgate:0.1.0
#
# The route file is not in the image: mount it at /etc/flipgate/flipgate.toml (Kubernetes: a
# ConfigMap, config/kubernetes/). Give it `state.dir = "/var/lib/flipgate"`, the one writable
# path (a volume; the root filesystem can be read-only), and, for the admin API to be reachable
# from outside the container, `admin.listen = "0.0.0.0:9901"` with a token:
# config/kubernetes/edge/configmap.yaml is such a file. Other commands work too:
#   docker run --rm -v /srv/flipgate:/etc/flipgate:ro flipgate:0.1.0 check /etc/flipgate/flipgate.toml

# The toolchain CI uses (Cargo.lock is lock-file version 4; the crate needs 1.85 or later).
# Debian 12 here and in the runtime image: the binary links against the same glibc.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# Cargo features to build with: "" (default) or "etcd" (the etcd state backend).
ARG FEATURES=""
# protoc: the etcd client compiles its protobufs at build time; libprotobuf-dev holds the
# well-known types they import (only recommended by protobuf-compiler). Build stage only.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# --locked: exactly Cargo.lock's versions. The caches keep crates.io downloads and compiled
# dependencies between builds (BuildKit); the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features "${FEATURES}" \
 && cp target/release/flipgate /flipgate \
 && mkdir -p /state

# distroless "cc": glibc, libgcc and CA certificates, no shell, no package manager. Runs as the
# `nonroot` user (65532). Debugging: the `:debug-nonroot` tag adds a busybox shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /flipgate /usr/local/bin/flipgate
# The runtime state directory, owned by the user, for `docker run` volumes (Kubernetes mounts an
# emptyDir or a PVC here; fsGroup makes it writable).
COPY --from=build --chown=65532:65532 /state /var/lib/flipgate
USER 65532:65532
# Logs go to a collector, not a terminal: no ANSI colour codes in them (tracing-subscriber reads
# NO_COLOR). RUST_LOG filters them as usual (default info).
ENV NO_COLOR=1
# Traffic (HTTP/1.1 and h2c), the admin listener (API, /metrics, /healthz, /readyz), HTTPS if
# the route file has [server.tls]. The route file decides what is actually bound.
EXPOSE 8080 9901 8443
VOLUME ["/var/lib/flipgate"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/flipgate"]
CMD ["run", "--config", "/etc/flipgate/flipgate.toml"]
