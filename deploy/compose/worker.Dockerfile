# The krill-worker image: krill-worker, its krill-sandbox-init helper, krill (the CLI) and the static krill-stub.
#
#   docker build -f deploy/compose/worker.Dockerfile -t krill/worker:0.1 .
#
# (from the repository root; deploy/compose/docker-compose.yml builds it for you).
# Base images come from Docker Hub: a machine without registry access cannot
# build this image, only run one already built and loaded (docker load).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p worker -p broker --bins \
 && scripts/build-stub

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/krill-worker /src/target/release/krill-sandbox-init /src/target/release/krill /usr/local/bin/
COPY --from=build /src/target/krill-stub /usr/local/lib/krill/krill-stub
COPY deploy/compose/entrypoint.sh /usr/local/bin/krill-entrypoint
# Defaults for a containerised worker; every one can be overridden by the environment.
ENV KRILL_SANDBOX=container \
    KRILL_METRICS_ADDR=0.0.0.0:9464 \
    KRILL_STUB_PATH=/var/lib/krill/stub/krill-stub \
    KRILL_LOG_FORMAT=json
EXPOSE 9464
# SIGTERM drains: no more claims, running tasks get KRILL_SHUTDOWN_GRACE to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/krill-entrypoint"]
CMD ["krill-worker"]
