# syntax=docker/dockerfile:1
# ticket-worker: a release build in the Rust image, run from a small distroless
# image as a non-root user. rustls everywhere: no OpenSSL in either stage.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
# Dependencies carried with a fix ([patch.crates-io] in Cargo.toml): without
# them the build fails, and dropping the patch would bring the bug back.
COPY patches ./patches
COPY lib ./lib
# The benchmark's crate is a member of the workspace, which Cargo loads
# whole: its files must be here, though the image never builds it.
COPY bench ./bench
# The product alone: the TapTalk stand-in (fake-taptalk, demo) is a feature
# the image leaves out, and the benchmark (bench/) a crate it does not build. docker-compose.yml builds its stand-in service
# with FEATURES=stand-in; production images never set it.
ARG FEATURES=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p taptalk-ticket-worker --no-default-features --features "$FEATURES" --bin ticket-worker \
    && cp target/release/ticket-worker /ticket-worker

# glibc, libgcc and CA certificates (for amqps://, sslmode=require and an
# https:// TapTalk), no shell; runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ticket-worker /usr/local/bin/ticket-worker
USER nonroot:nonroot
ENV LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/ticket-worker"]
CMD ["run"]
