# shellcheck shell=bash
# A signed APT repository and isolated apt-get clients, for tests/e2e/apt.sh and
# bench/pipeline.sh (source lib.sh first). Globals: WORK (work folder), REPO (the repository's
# root, served as /debian/), DIST (suite name), BIN (dists/$DIST/main/binary-amd64, relative to
# REPO), KEYRING (set by signing_key).

# mkdeb NAME VERSION [DEPENDS] [PAYLOAD_MIB] [PAYLOAD_KIB]: builds
# pool/main/<letter>/<name>/<name>_<ver-no-epoch>_all.deb, with that much random payload.
mkdeb() {
  local name=$1 version=$2 depends=${3:-} mib=${4:-0} kib=${5:-0}
  local src=$WORK/debsrc/$name upstream=${version#*:}
  local out=$REPO/pool/main/${name:0:1}/$name/${name}_${upstream}_all.deb
  mkdir -p "$src/DEBIAN" "$src/usr/share/doc/$name" "$(dirname "$out")"
  printf '%s %s: end-to-end test package for apt-proxy\n' "$name" "$version" >"$src/usr/share/doc/$name/README"
  local comp=(-Zxz)
  if [ "$mib" -gt 0 ]; then
    random_file "$src/usr/share/doc/$name/payload.bin" "$mib"
    comp=(-Zgzip -z1)   # random data does not compress: do not spend time trying
  elif [ "$kib" -gt 0 ]; then
    head -c "$((kib * 1024))" /dev/urandom >"$src/usr/share/doc/$name/payload.bin"
    comp=(-Zgzip -z1)
  fi
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: all"
    echo "Maintainer: apt-proxy e2e <e2e@test.invalid>"
    echo "Installed-Size: $(du -sk "$src/usr" | cut -f1)"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Section: misc"
    echo "Priority: optional"
    echo "Description: apt-proxy end-to-end test package $name"
    echo " Built by tests/e2e/aptrepo.sh; never installed on a real system."
  } >"$src/DEBIAN/control"
  dpkg-deb --root-owner-group "${comp[@]}" --build "$src" "$out" >/dev/null
}

# signing_key: a throwaway ed25519 key in $WORK/gnupg; its public keyring in $KEYRING.
signing_key() {
  export GNUPGHOME=$WORK/gnupg
  mkdir -m 700 "$GNUPGHOME"
  gpg --batch --quiet --passphrase '' --quick-gen-key 'apt-proxy e2e <apt@test.invalid>' ed25519 sign 1d
  KEYRING=$WORK/repo-keyring.gpg
  gpg --batch --quiet --export >"$KEYRING"
  gpgconf --kill gpg-agent
  unset GNUPGHOME
}

# publish_indexes: (re)writes Packages/.gz/.xz and their by-hash copies (earlier copies are kept,
# as archives keep them for clients that hold the previous Release), then Release, signed as
# InRelease and Release.gpg by the throwaway key in $WORK/gnupg.
publish_indexes() {
  (
    cd "$REPO"
    mkdir -p "$BIN"
    apt-ftparchive packages pool >"$BIN/Packages"
    rm -f "$BIN/Packages.gz" "$BIN/Packages.xz"
    gzip -9 -n -k "$BIN/Packages"
    xz -k "$BIN/Packages"
    printf 'Archive: %s\nComponent: main\nOrigin: apt-proxy-e2e\nLabel: apt-proxy-e2e\nArchitecture: amd64\n' \
      "$DIST" >"$BIN/Release"
    for algo in MD5Sum:md5sum SHA256:sha256sum SHA512:sha512sum; do
      mkdir -p "$BIN/by-hash/${algo%%:*}"
      for f in Packages Packages.gz Packages.xz; do
        cp "$BIN/$f" "$BIN/by-hash/${algo%%:*}/$(${algo#*:} "$BIN/$f" | cut -d' ' -f1)"
      done
    done
    apt-ftparchive \
      -o APT::FTPArchive::Release::Origin=apt-proxy-e2e \
      -o APT::FTPArchive::Release::Label=apt-proxy-e2e \
      -o APT::FTPArchive::Release::Suite="$DIST" \
      -o APT::FTPArchive::Release::Codename="$DIST" \
      -o APT::FTPArchive::Release::Architectures=amd64 \
      -o APT::FTPArchive::Release::Components=main \
      -o APT::FTPArchive::Release::Acquire-By-Hash=yes \
      release "dists/$DIST" >"$WORK/Release"
    mv "$WORK/Release" "dists/$DIST/Release"
  )
  local home=$WORK/gnupg
  GNUPGHOME=$home gpg --batch --quiet --yes --clearsign --output "$REPO/dists/$DIST/InRelease" "$REPO/dists/$DIST/Release"
  GNUPGHOME=$home gpg --batch --quiet --yes --armor --detach-sign --output "$REPO/dists/$DIST/Release.gpg" "$REPO/dists/$DIST/Release"
  GNUPGHOME=$home gpgconf --kill gpg-agent
}

# apt_client_conf DIR URL PROXY: a fresh isolated apt client in DIR whose only source is
# "deb URL $DIST main" (signed by $KEYRING), through PROXY (an http:// URL, or DIRECT);
# exports APT_CONFIG.
apt_client_conf() {
  local C=$1 url=$2 proxy=$3
  rm -rf "$C"
  mkdir -p "$C/etc/apt.conf.d" "$C/etc/preferences.d" "$C/etc/sources.list.d" "$C/etc/trusted.gpg.d" \
    "$C/state/lists/partial" "$C/cache/archives/partial" "$C/log"
  : >"$C/status"
  echo "deb [signed-by=$KEYRING] $url $DIST main" >"$C/etc/sources.list"
  # Everything apt reads comes from here: Dir::Etc::main=/dev/null keeps /etc/apt/apt.conf out and
  # Parts points away from /etc/apt/apt.conf.d (-o on the command line would come too late).
  cat >"$C/apt.conf" <<EOF
Dir::Etc::main "/dev/null";
Dir::Etc::Parts "$C/etc/apt.conf.d";
Dir::Etc::SourceList "$C/etc/sources.list";
Dir::Etc::SourceParts "$C/etc/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$C/etc/preferences.d";
Dir::Etc::Trusted "/dev/null";
Dir::Etc::TrustedParts "$C/etc/trusted.gpg.d";
Dir::State "$C/state";
Dir::State::status "$C/status";
Dir::Cache "$C/cache";
Dir::Log "$C/log";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
APT::Get::Assume-Yes "true";
Acquire::Languages "none";
Acquire::Retries "0";
Acquire::http::Timeout "30";
Acquire::http::Proxy "$proxy";
Acquire::https::Proxy "DIRECT";
EOF
  export APT_CONFIG=$C/apt.conf
}
