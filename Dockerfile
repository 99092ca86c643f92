# The operator image: one static binary (controller, instance manager, backup, render)
# plus restic, on a distroless non-root base. The init container of every database and
# backup pod copies both into the pod (`postgres-operator copy-binaries /controller`).
#
#   docker build -t ghcr.io/cozystack/postgres-operator:0.1.0 .

FROM docker.io/library/rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# crds/ and examples/ are not needed to build the binary.
RUN cargo build --release --locked --bin postgres-operator \
 && strip target/release/postgres-operator

# restic's official image ships a static binary.
FROM docker.io/restic/restic:0.18.1 AS restic

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/postgres-operator /usr/local/bin/postgres-operator
COPY --from=restic /usr/bin/restic /usr/local/bin/restic
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/postgres-operator"]
CMD ["controller"]
