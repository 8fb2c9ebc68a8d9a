# Palisade's image: policy-agent and palisade-cni on a small Debian base.
#
#   cargo xtask image            (or: docker build -t palisade:dev .)
#
# The build stage uses the same pinned toolchains as `cargo xtask setup`
# (xtask checks that these ARGs match it): stable Rust for user space, a
# nightly pinned by name for the eBPF object, and bpf-linker built against
# Debian's LLVM 22 (a newer LLVM cannot be linked by it).
ARG RUST_VERSION=1.95.0
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_SUITE} AS build
ARG EBPF_TOOLCHAIN=nightly-2026-05-20
ARG BPF_LINKER_SERIES=0.13
RUN apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*
RUN rustup toolchain install "${EBPF_TOOLCHAIN}" --profile minimal --component rust-src
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked --version "~${BPF_LINKER_SERIES}" \
      --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p policy-agent -p cni-bin \
 && mkdir -p /out \
 && cp target/release/policy-agent target/release/palisade-cni /out/

# The final image: the two binaries and what the init containers use
# (sh, grep and mount for the bpffs mount). No compiler, no sources.
FROM debian:${DEBIAN_SUITE}-slim
COPY --from=build /out/policy-agent /out/palisade-cni /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/policy-agent"]
