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
// bash -c (a simple command is exec'd by bash, so it gets the stop signal
// directly). /etc/profile is not read: Debian's resets PATH, which a config
// var may set.
var processType = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)

const launcher = `#!/bin/bash
# perch-heroku-dyno TYPE: start a Heroku dyno of process type TYPE.
# Written by perch launch --from-heroku (internal/heroku/launcher.go).
type="$1"
dir=` + ProcessTypesDir + `
if [ -z "$type" ] || [ ! -r "$dir/$type" ]; then
	echo "perch-heroku-dyno: the slug has no process type \"$type\"; it has: $(ls "$dir" | tr '\n' ' ')" >&2
	exit 127
fi
command=$(cat "$dir/$type")
export HOME=/app
export PORT="${PORT:-` + "5000" + `}"
export DYNO="$type.${PERCH_DYNO_INDEX:-1}"
export PS="$DYNO"
cd /app || exit 1
for f in /app/.profile.d/*.sh; do
	if [ -r "$f" ]; then . "$f"; fi
done
unset f
if [ -r /app/.profile ]; then . /app/.profile; fi
exec /bin/bash -c "$command"
`
