# cm-invalidator and the add-ons example service, for docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cm-invalidator -p cm-embedded --example addons

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cm-invalidator /usr/local/bin/cm-invalidator
COPY --from=build /src/target/release/examples/addons /usr/local/bin/addons
COPY config/invalidator.toml /etc/cm/invalidator.toml
ENV CM_INVALIDATOR_CONFIG=/etc/cm/invalidator.toml
ENTRYPOINT ["cm-invalidator"]
CMD ["run"]
