# Sourced by the scripts that run a Python peer: `python_venv VENV MODULE[=PACKAGE]...` makes
# the venv at VENV when absent and pip-installs the package of every module that does not
# import there (one venv serves the scripts, whatever each needs).
python_venv() {
  local venv=$1 spec missing=()
  shift
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  for spec in "$@"; do
    "$venv/bin/python" -c "import ${spec%%=*}" 2>/dev/null || missing+=("${spec#*=}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    "$venv/bin/pip" install -q "${missing[@]}"
  fi
}
