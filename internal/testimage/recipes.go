package testimage

import v1 "github.com/google/go-containerregistry/pkg/v1"

// Ready-made Debian images of common servers, configured as Debian runs
// them, for tests that need a real program rather than testapp. Each is a
// DebianImage to pass to Debian or NeedDebian, and may be changed first.

const debianPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func ports(ps ...string) map[string]struct{} {
	m := map[string]struct{}{}
	for _, p := range ps {
		m[p] = struct{}{}
	}
	return m
}

// Nginx is Debian's nginx-light with its default site: it listens on 80
// (IPv4 and IPv6) and answers GET / with "Welcome to nginx!" from
// /var/www/html. The master runs as root in the foreground (daemon off),
// its workers as www-data; its logs go to stdout and stderr.
func Nginx() DebianImage {
	return DebianImage{
		Packages: []string{"nginx-light"},
		Setup: []string{
			"ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log",
		},
		Config: v1.Config{
			Cmd:          []string{"/usr/sbin/nginx", "-g", "daemon off;"},
			Env:          []string{debianPath},
			ExposedPorts: ports("80/tcp"),
			StopSignal:   "SIGQUIT",
			WorkingDir:   "/",
		},
	}
}

// gunicornApp answers GET with a line naming the request and its user,
// and POST with the body it was sent.
const gunicornApp = `import json, os

def app(environ, start_response):
    method = environ["REQUEST_METHOD"]
    if method == "POST":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n)
    elif method == "GET":
        body = json.dumps({"path": environ["PATH_INFO"], "uid": os.getuid()}).encode() + b"\n"
    else:
        start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
        return [b"GET or POST\n"]
    start_response("200 OK", [("Content-Type", "application/json" if method == "GET" else "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]
`

// Gunicorn is Debian's python3-gunicorn serving a tiny WSGI app
// (/srv/app/app.py) on 0.0.0.0:8080 as the non-root user app (uid 1000):
// GET answers {"path": ..., "uid": 1000}, POST echoes the request body.
// Its access log goes to stdout. One worker of 4 threads (gthread), as
// behind a proxy that keeps connections open: a sync worker serves one
// connection at a time, and an idle one stalls it.
func Gunicorn() DebianImage {
	return DebianImage{
		Packages: []string{"python3-gunicorn"},
		Files:    map[string]File{"srv/app/app.py": {Mode: 0o644, Data: []byte(gunicornApp)}},
		Setup:    []string{"useradd --uid 1000 --user-group --create-home --shell /bin/sh app"},
		Config: v1.Config{
			Cmd:          []string{"python3", "-m", "gunicorn", "--bind", "0.0.0.0:8080", "--threads", "4", "--access-logfile", "-", "app:app"},
			Env:          []string{debianPath, "PYTHONUNBUFFERED=1"},
			ExposedPorts: ports("8080/tcp"),
			User:         "app",
			WorkingDir:   "/srv/app",
		},
	}
}

// Redis is Debian's redis-server with Debian's /etc/redis/redis.conf,
// run as the user redis in the foreground, listening on 6379 on every
// address with protected mode off, logging to stdout. Its pid file goes
// to /run/redis, which the image holds owned by redis, as systemd's
// RuntimeDirectory would make it.
func Redis() DebianImage {
	return DebianImage{
		Packages: []string{"redis-server"},
		Setup:    []string{"install -d -o redis -g redis -m 2755 /run/redis"},
		Config: v1.Config{
			Cmd: []string{"/usr/bin/redis-server", "/etc/redis/redis.conf", "--daemonize", "no", "--supervised", "no",
				"--bind", "* -::*", "--protected-mode", "no", "--logfile", ""},
			Env:          []string{debianPath},
			ExposedPorts: ports("6379/tcp"),
			User:         "redis",
			WorkingDir:   "/var/lib/redis",
		},
	}
}

// postgresEntrypoint makes the cluster on first start, then runs the
// server in the foreground.
const postgresEntrypoint = `#!/bin/sh
set -e
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	auth=trust pwfile=
	if [ -n "$POSTGRES_PASSWORD" ]; then
		auth=scram-sha-256 pwfile=$(mktemp)
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	fi
	"$bin/initdb" -D "$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host="$auth" ${pwfile:+--pwfile="$pwfile"}
	[ -z "$pwfile" ] || rm -f "$pwfile"
	echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
	printf 'host all all 0.0.0.0/0 %s\nhost all all ::/0 %s\n' "$auth" "$auth" >>"$PGDATA/pg_hba.conf"
fi
exec "$bin/postgres" -D "$PGDATA" "$@"
`

// Postgres is Debian's postgresql run as the user postgres: on first
// start /usr/local/bin/postgres-entrypoint runs initdb into $PGDATA
// (/var/lib/postgresql/data), then the server listens on 5432 on every
// address. Connections are trusted, or need POSTGRES_PASSWORD (scram)
// when that is set at first start. The image holds Debian's
// /run/postgresql (owned by postgres, mode 2775), where the server puts
// its socket and lock file; Debian's own cluster made at install time is
// dropped.
func Postgres() DebianImage {
	return DebianImage{
		Packages: []string{"postgresql"},
		Files:    map[string]File{"usr/local/bin/postgres-entrypoint": {Mode: 0o755, Data: []byte(postgresEntrypoint)}},
		Setup: []string{
			"pg_lsclusters -h | while read v c _; do pg_dropcluster \"$v\" \"$c\"; done",
			"install -d -o postgres -g postgres -m 2775 /run/postgresql",
			"install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data",
		},
		Config: v1.Config{
			Entrypoint:   []string{"/usr/local/bin/postgres-entrypoint"},
			Env:          []string{debianPath, "PGDATA=/var/lib/postgresql/data"},
			ExposedPorts: ports("5432/tcp"),
			StopSignal:   "SIGINT",
			User:         "postgres",
			WorkingDir:   "/var/lib/postgresql",
		},
	}
}
