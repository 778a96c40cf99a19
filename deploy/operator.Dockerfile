# syntax=docker/dockerfile:1
# devicelink-operator (and the devicelink CLI) image, for Docker users: the same contents as
# `cargo xtask image` builds with buildah, laid out by the same deploy/image/rootfs.sh (the
# binaries, exactly the shared libraries ldd names and the loader, /etc/passwd and /etc/group for
# root and uid 65532, an empty /tmp; no shell, no package manager). Build from the repository root:
#   DOCKER_BUILDKIT=1 docker build -f deploy/operator.Dockerfile -t devicelink-operator:0.1.0 .
# Only the operator crate is compiled (stable Rust); the proxy's eBPF build is not needed.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p devicelink-operator --bin devicelink-operator --bin devicelink \
 && mkdir -p /out \
 && cp target/release/devicelink-operator target/release/devicelink /out/ \
 && deploy/image/rootfs.sh /rootfs /out/devicelink-operator /out/devicelink

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/devicelink-operator"]
CMD ["run", "--log-format", "json"]
