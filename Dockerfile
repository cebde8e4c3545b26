# cm-invalidator and the add-ons example service, for docker-compose.yml.
# scripts/test runs this file's `RUN cargo build` line and checks that every
# `COPY --from=build` source exists (scripts/lib/docker.sh).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# --bin and --example are target selections, which apply to every -p package:
# with `--example addons` alone, cargo builds that example and no binary.
RUN cargo build --release --locked -p cm-invalidator --bin cm-invalidator -p cachemachine --example addons

# The same Debian release as the build image, so the binaries' glibc matches.
FROM debian:bookworm-slim
# psql: the compose `setup` service runs it.
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin cm
COPY --from=build /src/target/release/cm-invalidator /usr/local/bin/cm-invalidator
COPY --from=build /src/target/release/examples/addons /usr/local/bin/addons
COPY config/invalidator.toml /etc/cm/invalidator.toml
ENV CM_INVALIDATOR_CONFIG=/etc/cm/invalidator.toml
# Neither program writes files or binds a privileged port (the add-ons
# service listens where --listen says, 127.0.0.1:8080 by default).
USER cm
ENTRYPOINT ["cm-invalidator"]
CMD ["run"]
