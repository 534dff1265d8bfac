# Sourced by the scripts that run the release binaries: `swav_bins CARGO-ARGS...` sets BIN_DIR to
# their folder. With $SWAV_BIN_DIR set, that folder as it is (binaries built elsewhere: another
# commit's, for a before/after comparison in one run); else the binaries are built here
# (cargo build --release --locked CARGO-ARGS) and BIN_DIR is $CARGO_TARGET_DIR/release
# (target/release by default).
swav_bins() {
  if [ -n "${SWAV_BIN_DIR:-}" ]; then
    BIN_DIR=$SWAV_BIN_DIR
  else
    cargo build --release --locked -q "$@"
    BIN_DIR=${CARGO_TARGET_DIR:-target}/release
  fi
}
