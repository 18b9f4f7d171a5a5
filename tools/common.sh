# Shell functions shared by tools/install.sh and tools/install-swift.sh (sourced, not run).

# pipq PYTHON ARGS...: pip, quiet, without the "Location ... is ignored" lines this machine's pip
# config prints for every package; PIP_OPTS (an array, may be unset) is added to every call.
pipq() {
    local py="$1" log rc=0
    shift
    log="$(mktemp)"
    "$py" -m pip --disable-pip-version-check -q "$@" ${PIP_OPTS[@]+"${PIP_OPTS[@]}"} >"$log" 2>&1 || rc=$?
    grep -v "^WARNING: Location" "$log" || true
    rm -f "$log"
    return "$rc"
}

# need_disk TAG VENV GB [WHY]: stop before pip starts unless GB gigabytes are free here. A full disk
# otherwise ends pip half-way with "[Errno 28] No space left on device" (seen once in CI).
need_disk() {
    local tag="$1" venv="$2" need="$3" why="${4:-}" free
    free=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1024 / 1024 ))
    if (( free < need )); then
        echo "[$tag] only $free GB free on the disk of $(pwd); $venv needs about $need GB${why:+ ($why)}." \
             "Free some space and run this again."
        exit 1
    fi
}
