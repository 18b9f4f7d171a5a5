# Sourced by the GPU scripts of this folder (from the repository root).
# wheels_into TARGET WHEEL...: install carried wheels into the folder TARGET, offline and without
# dependencies (the set is complete by construction; see README.md), for PYTHONPATH to pick up.
# pip's "WARNING" lines (target folders that already hold a package) are left out; the status is pip's.
wheels_into() {
  local target=$1; shift
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@" \
    2> >(grep -v "^WARNING" >&2)
}
