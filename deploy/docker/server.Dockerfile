# syntax=docker/dockerfile:1
# The ext-authz-server image. Multi-stage: build with the pinned toolchain, run as a non-root
# user on a slim Debian with CA certificates (the server calls the IdP over https).
#
#   docker build -f deploy/docker/server.Dockerfile -t authz/ext-authz-server .
#   docker run -v $PWD/config/ext-authz-server.dev.yaml:/etc/authz/server.yaml authz/ext-authz-server
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ext-authz-server \
 && cp target/release/ext-authz-server /ext-authz-server

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home authz
COPY --from=build /ext-authz-server /usr/local/bin/ext-authz-server
USER 10001
# gRPC Check + health, and the admin port (/metrics, /healthz, /readyz, /admin/*).
EXPOSE 9191 9192
ENTRYPOINT ["/usr/local/bin/ext-authz-server", "--config", "/etc/authz/server.yaml"]
