package heroku

import "regexp"

// LauncherPath is where the image holds the launcher, its entrypoint; its
// one argument is the process type to start.
const LauncherPath = "/perch/heroku/dyno"

// ProcessTypesDir holds one file per process type, the slug's command.
const ProcessTypesDir = "/perch/heroku/process-types"

// DefaultPort is the PORT a dyno gets when the machine's env sets none:
// `heroku local`'s.
const DefaultPort = 5000

// launcher starts a dyno as Heroku's dyno manager does: HOME=/app, PORT,
// DYNO=<type>.<n> and PS, in /app, every /app/.profile.d/*.sh then
// /app/.profile sourced by bash, then the process type's command run by
// bash -c. The launcher stays as the machine's PID 1, which the kernel
// shields from signals it has no handler for, so an app that relies on
// SIGTERM's default action (most do, as on Heroku they are not PID 1)
// would never stop: it runs the command in its own process group and
// passes SIGTERM (and SIGINT) to the whole group, as Heroku signals every
// process of a dyno, then exits with the command's status. /etc/profile is
// not read: Debian's resets PATH, which a config var may set.
// $PERCH_HEROKU_ROOT prefixes every path (tests run it outside an image).
const launcher = `#!/bin/bash
# perch-heroku-dyno TYPE: start a Heroku dyno of process type TYPE.
# Written by perch launch --from-heroku (internal/heroku/launcher.go).
type="$1"
root="${PERCH_HEROKU_ROOT:-}"
dir="$root` + ProcessTypesDir + `"
if [ -z "$type" ] || [ ! -r "$dir/$type" ]; then
	echo "perch-heroku-dyno: the slug has no process type \"$type\"; it has: $(ls "$dir" | tr '\n' ' ')" >&2
	exit 127
fi
command=$(cat "$dir/$type")
export HOME="$root/app"
export PORT="${PORT:-5000}"
export DYNO="$type.${PERCH_DYNO_INDEX:-1}"
export PS="$DYNO"
unset PERCH_HEROKU_ROOT
cd "$HOME" || exit 1
for f in "$HOME"/.profile.d/*.sh; do
	if [ -r "$f" ]; then . "$f"; fi
done
unset f
if [ -r "$HOME/.profile" ]; then . "$HOME/.profile"; fi
# The traps are set before the command starts: a signal that comes while
# it is being started is kept and passed on once it has.
child= pending=
forward() {
	if [ -z "$child" ]; then pending=$1; return; fi
	kill -s "$1" -- "-$child" 2>/dev/null || kill -s "$1" "$child" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT
set -m # the command gets its own process group, signalled whole
/bin/bash -c "$command" &
child=$!
if [ -n "$pending" ]; then forward "$pending"; fi
while :; do
	wait "$child"
	status=$? # above 128 also when a trapped signal cut the wait short
	kill -0 "$child" 2>/dev/null || break
done
wait "$child" 2>/dev/null && status=0 || { s=$?; [ "$s" = 127 ] || status=$s; }
exit "$status"
`

// processType is a Procfile process type name.
var processType = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
