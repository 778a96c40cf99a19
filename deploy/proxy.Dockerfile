# syntax=docker/dockerfile:1
# devicelink-proxy image, for Docker users: the same contents as `cargo xtask image` builds with
# buildah, laid out by the same deploy/image/rootfs.sh (the binary, exactly the shared libraries
# ldd names and the loader, /etc/passwd and /etc/group for root and uid 65532, an empty /tmp; no
# shell, no package manager). Build from the repository root:
#   DOCKER_BUILDKIT=1 docker build -f deploy/proxy.Dockerfile -t devicelink-proxy:0.1.0 .
# The kernel programs need nightly (rust-src, -Z build-std) and a bpf-linker built against
# nightly's own LLVM, as `cargo xtask setup` does on a developer machine.
FROM docker.io/library/rust:1.95-bookworm AS build
# aya-build runs `cargo +nightly`; pass --build-arg NIGHTLY=nightly-YYYY-MM-DD to pin a date
# (the workspace is known to build with rustc 1.97.0-nightly of 2026-05-19).
ARG NIGHTLY=nightly
RUN rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src \
 && if [ "$NIGHTLY" != nightly ]; then rustup toolchain link nightly "$(rustc +"$NIGHTLY" --print sysroot)"; fi \
 && sysroot="$(rustc +nightly --print sysroot)" \
 && libllvm="$(ls "$sysroot"/lib/libLLVM.so.* | head -n1)" \
 && major="$(basename "$libllvm" | sed 's/libLLVM\.so\.\([0-9]*\).*/\1/')" \
 && mkdir -p /opt/llvm/lib \
 && ln -s "$libllvm" /opt/llvm/lib/libLLVM.so \
 && ln -s "$libllvm" "/opt/llvm/lib/$(basename "$libllvm")" \
 && LLVM_PREFIX=/opt/llvm cargo install bpf-linker --locked --no-default-features --features "llvm-$major"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p devicelink-proxy \
 && mkdir -p /out && cp target/release/devicelink-proxy /out/ \
 && deploy/image/rootfs.sh /rootfs /out/devicelink-proxy

# Runs as uid 0, as `cargo xtask image`'s does: the proxy pod adds BPF, NET_ADMIN and PERFMON
# after dropping every capability, and Kubernetes gives added capabilities to root only (see
# devicelink_spec::pod_security, which the operator renders the pod from).
FROM scratch
COPY --from=build /rootfs/ /
USER 0:0
ENTRYPOINT ["/usr/local/bin/devicelink-proxy"]
