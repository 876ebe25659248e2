#!/usr/bin/env bash
# limitador 0.14.0, as published, does not compile with only its "redis_storage"
# feature: Counter::variables_for_key and storage::keys::bin, which the Redis key
# encoding calls, are gated on "disk_storage" alone (which pulls RocksDB, C++).
# This unpacks the published crate (downloaded and checksum-verified by cargo)
# into target/rls-server/patched/ and widens those two gates to
# any(disk_storage, redis_storage), the same gate storage/mod.rs already puts on
# the keys module (plus allow(dead_code) on keys::bin, of which Redis uses a
# part). Cargo.toml's [patch.crates-io] points there. Idempotent.
set -euo pipefail
VERSION=0.14.0
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dest="$root/target/rls-server/patched"
crate="$dest/limitador-$VERSION"
[ -f "$crate/.meshguard-patched" ] && exit 0

# A throw-away manifest that depends on the published crate, so that cargo
# itself downloads and unpacks it (the real manifest points at the patched copy).
fetch="$root/target/rls-server/fetch-limitador"
mkdir -p "$fetch/src"
cat > "$fetch/Cargo.toml" <<TOML
[package]
name = "fetch-limitador"
version = "0.0.0"
edition = "2021"
publish = false
[workspace]
[dependencies]
limitador = { version = "=$VERSION", default-features = false, features = ["redis_storage"] }
TOML
: > "$fetch/src/lib.rs"
manifest=$(cargo metadata -q --format-version 1 --manifest-path "$fetch/Cargo.toml" |
  python3 -c 'import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "limitador"))')
src=$(dirname "$manifest")

rm -rf "$crate" "$crate.tmp"
mkdir -p "$dest"
cp -R "$src" "$crate.tmp"
chmod -R u+w "$crate.tmp"
gate='#[cfg(feature = "disk_storage")]'
wide='#[cfg(any(feature = "disk_storage", feature = "redis_storage"))]'
# The gate on the line right before each item, and only there.
for spec in "src/counter.rs:pub(crate) fn variables_for_key" "src/storage/keys.rs:pub mod bin {"; do
  file=${spec%%:*} item=${spec#*:}
  n=$(grep -nF -- "$item" "$crate.tmp/$file" | cut -d: -f1)
  if [ "$(echo "$n" | wc -w)" != 1 ] || [ "$(sed -n "$((n - 1))p" "$crate.tmp/$file" | sed 's/^ *//')" != "$gate" ]; then
    echo "patch-limitador.sh: $file is not as expected (limitador $VERSION changed?)" >&2
    exit 1
  fi
  sed -i "$((n - 1))s/$(printf '%s' "$gate" | sed 's/[][\/.*^$]/\\&/g')/$(printf '%s' "$wide" | sed 's/[\/&]/\\&/g')/" "$crate.tmp/$file"
done
sed -i 's/^pub mod bin {$/#[allow(dead_code)]\npub mod bin {/' "$crate.tmp/src/storage/keys.rs"
touch "$crate.tmp/.meshguard-patched"
mv "$crate.tmp" "$crate"
echo "patched limitador $VERSION into ${crate#"$root"/}"
