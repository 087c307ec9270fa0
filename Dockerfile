# pubbot: a small runtime image with the `pubbot` binary only (no
# simulator, no demo), running as a non-root user.
#
#   docker build -t pubbot:latest .
#   docker run --rm pubbot:latest --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Offline query data (.sqlx/): the build needs no database.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked -p pubbot --bin pubbot \
 && install -D -m 0755 target/release/pubbot /out/pubbot

# glibc and libgcc only; TLS roots are compiled in (rustls, webpki-roots).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pubbot /usr/local/bin/pubbot
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/pubbot"]
CMD ["serve"]
