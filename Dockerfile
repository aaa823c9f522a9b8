# syntax=docker/dockerfile:1
# Postern's container image: built in the official Rust image, shipped on
# distroless (glibc, CA certificates, no shell), as user 65532.
#
#   docker build -t postern:dev .
#   docker run --rm postern:dev --version
#
# The binary is at /usr/local/bin/postern. The default command runs the
# ingress controller with the settings at /etc/postern/config.yaml (the
# chart mounts its ConfigMap there); `docker run ... IMAGE check --config
# FILE`, `routes ...` or `crd` run the other subcommands.
#
# tests/container_image.rs lints this file with hadolint, and builds and runs
# its final stage with buildah on a scratch root holding the host-built
# binary and the libraries it links: the two base images cannot be pulled
# where the tests run, so the build stage itself is not tested there (the
# script it runs is the one benches/proxy_vs_nginx.sh builds with).

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The manifest and sources (see .dockerignore): the benches are listed in
# Cargo.toml, so cargo wants their files too. The release script and the
# example it mints its training session with make the profile-guided build.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples/session_token.rs ./examples/
COPY scripts/build-release.sh ./scripts/
COPY scripts/lib/shell.sh ./scripts/lib/
# The build users run from the README: scripts/build-release.sh, the
# profile-guided build (it installs wrk, h2load and curl with apt-get and
# rustup's llvm-tools for its training run, which listens on loopback
# only). About 6 minutes on 2 cores; the caches keep the registry and the
# build between runs. `--build-arg PGO=0` makes a plain release build.
ARG PGO=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    PGO="${PGO}" scripts/build-release.sh \
    && strip --strip-debug target/pgo/postern \
    && install -D -m 0755 target/pgo/postern /out/postern

FROM gcr.io/distroless/cc-debian12:nonroot
# Keep in step with Cargo.toml (tests/container_image.rs checks it).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="postern" \
      org.opencontainers.image.description="Identity-aware access proxy and Kubernetes ingress controller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/postern /usr/local/bin/postern
USER 65532:65532
# 8443 HTTPS (the proxy), 8080 plain HTTP (redirects to https), 9090 metrics
# and the health endpoints.
EXPOSE 8443 8080 9090
ENTRYPOINT ["/usr/local/bin/postern"]
CMD ["serve", "--config", "/etc/postern/config.yaml", "--kubernetes"]
