# syntax=docker/dockerfile:1
# devicelink-console image, for Docker users: the same contents as `cargo xtask image` builds
# with buildah, laid out by the same deploy/image/rootfs.sh (the binary, exactly the shared
# libraries ldd names and the loader, /etc/passwd and /etc/group for root and uid 65532, an empty
# /tmp; no shell, no package manager). Build from the repository root:
#   DOCKER_BUILDKIT=1 docker build -f deploy/console.Dockerfile -t devicelink-console:0.1.0 .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p devicelink-console \
 && mkdir -p /out && cp target/release/devicelink-console /out/ \
 && deploy/image/rootfs.sh /rootfs /out/devicelink-console

FROM scratch
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/devicelink-console"]
