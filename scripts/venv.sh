# Sourced by scripts/demo and scripts/test: make (once) and use the project's own virtual
# environment, .venv, with the system's python3.  Debian's python3 refuses `pip install`
# outside a virtual environment (PEP 668), and the system site-packages are never touched.
# Sets VENV_PY to the venv's python.

venv_dir="$PWD/.venv"
VENV_PY="$venv_dir/bin/python"

apt_install() {  # apt_install PACKAGE...: as root install them, else say how and fail
  if [ "$(id -u)" = 0 ]; then
    echo "installing: $*" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing system packages: $* (run: sudo apt-get install -y $*)" >&2
    return 1
  fi
}

if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3
fi
if [ ! -x "$VENV_PY" ]; then
  # ensurepip is what Debian splits off into python3-venv
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python${pyver}-venv" || apt_install python3-venv
  fi
  rm -rf "$venv_dir"
  python3 -m venv "$venv_dir"
fi
# (Re)install the project and its test extras when pyproject.toml changed.
stamp="$venv_dir/.imapproxy-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV_PY" -m pip install -qq --disable-pip-version-check --upgrade pip
  "$VENV_PY" -m pip install -qq --disable-pip-version-check -e '.[test]'
  echo "$want" >"$stamp"
fi
