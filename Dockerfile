# syntax=docker/dockerfile:1
# One image for every Isthmus component: the `isthmus` binary, the component
# chosen by argument (`control-plane`, `gateway`, `dns`, `federation`,
# `sidecar`, `iptables`), plus `isthmus-sidecar` and `isthmus-gateway`, the
# sidecar and the east-west gateway alone (same flags), which injected Pods
# and the gateway Deployment run: their smaller code keeps the proxies'
# resident memory down. Both are built with the `dist` profile (fat LTO, one codegen
# unit). iptables is included for the injected init container.
#
#   docker build -t isthmus:dev .
#   docker build --build-arg PGO=1 -t isthmus:dev .
#
# PGO=1 builds the two proxies profile-guided (scripts/pgo-build.sh: trained
# on the benchmarks' loopback loads, which it installs nginx, wrk and haproxy
# for; about 25 minutes more on two cores): 6–8 % more requests/s and 0.7–1.3 MiB
# less resident memory per sidecar on this project's benchmark
# (docs/benchmarks/sidecar.md, "Profile-guided build").
#
# Never built on the project's machines (no Docker engine there): see README.

FROM rust:1.95-bookworm AS build
ARG PGO=
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p isthmus-cli -p isthmus-sidecar -p isthmus-gateway \
        --bin isthmus --bin isthmus-sidecar --bin isthmus-gateway \
 && cp target/dist/isthmus target/dist/isthmus-sidecar target/dist/isthmus-gateway / \
 && if [ -n "$PGO" ]; then \
        apt-get update -qq && scripts/pgo-build.sh \
        && cp target/pgo/isthmus-sidecar target/pgo/isthmus-gateway /; \
    fi

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /isthmus /isthmus-sidecar /isthmus-gateway /usr/local/bin/
# The proxy uid/gid that the capture rules exclude; every component runs as it.
# Only the init container (`isthmus iptables --apply`) runs as root, with NET_ADMIN.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/isthmus"]
CMD ["--help"]
