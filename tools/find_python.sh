#!/usr/bin/env bash
# Print the path of a working Python interpreter of the wanted minor series, or exit 1.
#   tools/find_python.sh 3.12+   -> Python >= 3.12 (jax 0.12 needs it)
#   tools/find_python.sh 3.11    -> exactly 3.11 (the local CPU torch wheel is cp311)
# Tries plain names on PATH first (Colab, most distros), then pyenv installs that are not the active version.
set -u
want="$1"
case "$want" in
  3.12+) names="python3.12 python3.13 python3.14 python3"; check='import sys; sys.exit(sys.version_info < (3, 12))' ;;
  3.11) names="python3.11 python3"; check='import sys; sys.exit(sys.version_info[:2] != (3, 11))' ;;
  *) echo "usage: $0 3.12+|3.11" >&2; exit 2 ;;
esac
candidates=""
for n in $names; do candidates="$candidates $(command -v "$n" 2>/dev/null)"; done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  candidates="$candidates $(ls -d "$root"/versions/3.1[1-9]*/bin/python 2>/dev/null | sort -V | tr '\n' ' ')"
fi
for py in $candidates; do
  if [ -x "$py" ] && "$py" -c "$check" 2>/dev/null; then
    # Resolve to the real interpreter so a pyenv shim's version switch cannot change it later.
    "$py" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
echo "no Python $want found (tried:$candidates); install one, e.g. 'pyenv install 3.12'" >&2
exit 1
