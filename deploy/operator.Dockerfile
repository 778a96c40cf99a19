# syntax=docker/dockerfile:1
# devicelink-operator (and the devicelink CLI) image. Build from the repository root:
#   DOCKER_BUILDKIT=1 docker build -f deploy/operator.Dockerfile -t devicelink-operator:0.1.0 .
# Only the operator crate is compiled (stable Rust); the proxy's eBPF build is not needed.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p devicelink-operator --bins \
 && mkdir -p /out \
 && cp target/release/devicelink-operator target/release/devicelink /out/

# glibc from the same Debian release as the build; no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/devicelink-operator /out/devicelink /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/devicelink-operator"]
CMD ["run", "--log-format", "json"]
