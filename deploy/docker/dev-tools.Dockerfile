# syntax=docker/dockerfile:1
# The development identity provider and the echo upstream, for docker-compose only (the dev IdP
# mints tokens for anyone who asks: never run it anywhere that matters).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dev-tools \
 && cp target/release/dev-idp target/release/echo-upstream /

FROM debian:bookworm-slim
RUN useradd --system --uid 10002 --no-create-home dev
COPY --from=build /dev-idp /echo-upstream /usr/local/bin/
USER 10002
