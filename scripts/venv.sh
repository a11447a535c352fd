# Sourced by start.sh and test.sh: create .venv and install the project into it once.
#
# A stamp in .venv records what was installed (a hash of pyproject.toml and the project's folder);
# while it matches, nothing is installed again, so a restart needs no network (hospital servers
# often have none). Editing pyproject.toml (dependencies, entry points) or moving the folder
# reinstalls. Code changes need nothing: the install is editable.

install_fingerprint() {
  "$PYTHON" -c 'import hashlib, os; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), os.getcwd())'
}

# installed_by SPEC: the stamp file of an install of SPEC ("." or ".[test]").
installed_by() {
  local extras
  extras="$(printf '%s' "$1" | tr -cd 'a-z0-9,')"  # "." -> "", ".[test]" -> "test"
  echo ".venv/.xds-installed${extras:+-$extras}"
}

# ensure_venv SPEC [SPEC...]: install SPEC unless an up-to-date install of SPEC or of one of the
# other (wider) SPECs is already there.
ensure_venv() {
  local want spec
  want="$(install_fingerprint)"
  if .venv/bin/python -c '' 2>/dev/null; then
    for spec in "$@"; do
      [ "$(cat "$(installed_by "$spec")" 2>/dev/null)" = "$want" ] && return 0
    done
  else
    "$PYTHON" -m venv --clear .venv
  fi
  echo "installing $1 into .venv (once; again only when pyproject.toml changes)"
  if ! { .venv/bin/python -m pip install --quiet --upgrade pip && .venv/bin/python -m pip install --quiet -e "$1"; }
  then
    echo "installing $1 failed: it needs the package index (the network) once, and again after pyproject.toml changes" >&2
    exit 1
  fi
  echo "$want" > "$(installed_by "$1")"
}
