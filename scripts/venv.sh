# shellcheck shell=bash
# venv NAME PIP-ARGS...: prints the path of a Python virtualenv holding PIP-ARGS, made once and
# kept outside the checkout (CONVERGE_CACHE_DIR, default /var/cache/converge when writable, else
# target/) so that a fresh clone — as CI makes — does not install it again. A venv is only used
# once its install finished (the .complete marker); a half-made one is made again.
venv() {
  local name="$1" cache dir
  shift
  cache="${CONVERGE_CACHE_DIR:-/var/cache/converge}"
  if ! { mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; }; then
    cache=target
  fi
  dir="$cache/venv-$name"
  if ! [ -f "$dir/.complete" ]; then
    # Debian's python3 needs python3-venv for ensurepip.
    python3 -c 'import ensurepip' 2>/dev/null || {
      as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
      as_root apt-get update -qq >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    }
    rm -rf "$dir"
    python3 -m venv "$dir" >&2
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
    touch "$dir/.complete"
  fi
  echo "$dir"
}
