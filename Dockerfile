# Palisade's image for those who build with Docker: the two static
# binaries, policy-agent and palisade-cni, and nothing else (no shell, no C
# library; the init containers run subcommands of these binaries).
#
#   docker build -t palisade:dev .
#
# `cargo xtask image` builds the same image without Docker, as an archive
# for `ctr images import` / `kind load image-archive` / `docker load`; a
# test holds this file's final stage to the files it packs.
#
# The build stage uses the same pinned toolchains as `cargo xtask setup`
# (xtask checks that these ARGs match it): stable Rust for user space,
# built for musl so the binaries are static (palisade-cni runs on the host,
# whatever its C library), a nightly pinned by name for the eBPF object,
# and bpf-linker built against Debian's LLVM 22 (a newer LLVM cannot be
# linked by it).
ARG RUST_VERSION=1.95.0
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_SUITE} AS build
ARG EBPF_TOOLCHAIN=nightly-2026-05-20
ARG BPF_LINKER_SERIES=0.13
ARG STATIC_TARGET=x86_64-unknown-linux-musl
RUN apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "${STATIC_TARGET}"
RUN rustup toolchain install "${EBPF_TOOLCHAIN}" --profile minimal --component rust-src
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked --version "~${BPF_LINKER_SERIES}" \
      --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target "${STATIC_TARGET}" -p policy-agent -p cni-bin \
 && mkdir -p /out \
 && cp "target/${STATIC_TARGET}/release/policy-agent" "target/${STATIC_TARGET}/release/palisade-cni" /out/

FROM scratch
COPY --from=build /out/policy-agent /out/palisade-cni /usr/local/bin/
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT ["/usr/local/bin/policy-agent"]
