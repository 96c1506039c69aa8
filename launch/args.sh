# Argument handling shared by the launch scripts; sourced from the
# repository root:
#
#   source launch/args.sh NUM_POSITIONAL USAGE_LINES "$@"
#
# With fewer than NUM_POSITIONAL arguments it prints lines USAGE_LINES (a sed
# range such as 2,13: the calling script's usage) and exits 2. Otherwise it
# sets positional (the first NUM_POSITIONAL arguments), args (the rest,
# without --dry-run), extra (args quoted for a remote shell, each after a
# space), dry (1 under --dry-run, else 0) and run (`echo` under --dry-run,
# else empty: commands prefixed with "${run[@]}" are printed, not run).
_num_positional=$1 _usage_lines=$2
shift 2
if [[ $# -lt $_num_positional ]]; then
  sed -n "${_usage_lines}p" "$0" >&2
  exit 2
fi
positional=("${@:1:_num_positional}")
shift "$_num_positional"
dry=0 run=() args=()
for a in "$@"; do
  if [[ $a == --dry-run ]]; then dry=1 run=(echo); else args+=("$a"); fi
done
extra=""
if [[ ${#args[@]} -gt 0 ]]; then extra=$(printf ' %q' "${args[@]}"); fi
