package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

func (d *decoder) httpService(s *section) *HTTPService {
	h := &HTTPService{}
	h.InternalPort = d.internalPort(s)
	h.ForceHTTPS, _, _ = s.boolean("force_https")
	h.AutoStopMachines, h.AutoStartMachines, h.MinMachinesRunning, h.IdleTimeout = d.autoStartStop(s)
	h.Processes, _, _ = s.strs("processes", `["app"]`)
	h.Concurrency = d.concurrencyOf(s)
	h.Checks = d.checks(s, "checks", "http")
	if sub := s.sub("tls_options"); sub != nil {
		h.TLSOptions = d.tlsOptions(sub) // ports.go
	}
	if sub := s.sub("http_options"); sub != nil {
		h.HTTPOptions = d.httpOptions(sub)
	}
	d.ignoreMachineChecks(s)
	s.done()
	d.claimPort("tcp", 80, s.p)
	d.claimPort("tcp", 443, s.p)
	return h
}

func (d *decoder) internalPort(s *section) int {
	if _, ok := s.m["internal_port"]; !ok {
		s.get("internal_port") // so a typo of it is suggested
		d.errorf(s.p, "%s needs internal_port, the port your app listens on, e.g. internal_port = 8080", s.p.section())
		return 0
	}
	port, _, _ := s.port("internal_port")
	return port
}

// autoStartStop reads a service's scale to zero keys: Fly's, and Perch's
// idle_timeout (how long a machine is idle before autostop stops it).
func (d *decoder) autoStartStop(s *section) (stop string, start *bool, minRunning int, idle time.Duration) {
	if v, p, ok := s.get("auto_stop_machines"); ok {
		switch v := v.(type) {
		case bool:
			stop = "off"
			if v {
				stop = "stop"
			}
		case string:
			if slices.Contains([]string{"off", "stop", "suspend"}, v) {
				stop = v
			} else {
				d.errorf(p, "auto_stop_machines %q is not one of \"off\", \"stop\", \"suspend\", true or false", v)
			}
		default:
			d.errorf(p, "auto_stop_machines must be \"off\", \"stop\", \"suspend\", true or false, got %s", describe(v))
		}
	}
	if b, _, ok := s.boolean("auto_start_machines"); ok {
		start = &b
	}
	minRunning, _, _ = s.count("min_machines_running", 0)
	idle = d.seconds(s, "idle_timeout") // sections.go
	if _, p, ok := s.get("idle_timeout"); ok && stop != "stop" && stop != "suspend" {
		d.warnf(p, `idle_timeout has no effect unless auto_stop_machines is "stop" or "suspend"`)
	}
	return stop, start, minRunning, idle
}

// concurrencyOf reads a service's concurrency: a table, or the "soft,hard"
// string of old fly.toml files, which flyctl reads as requests.
func (d *decoder) concurrencyOf(s *section) *api.Concurrency {
	v, p, ok := s.get("concurrency")
	if !ok {
		return nil
	}
	str, isStr := v.(string)
	if !isStr {
		if cs := s.sub("concurrency"); cs != nil {
			return d.concurrency(cs)
		}
		return nil
	}
	softS, hardS, found := strings.Cut(str, ",")
	soft, err1 := strconv.Atoi(strings.TrimSpace(softS))
	hard, err2 := strconv.Atoi(strings.TrimSpace(hardS))
	if !found || err1 != nil || err2 != nil || soft < 1 || hard < soft {
		d.errorf(p, "concurrency %q is not \"soft,hard\" limits; write e.g. concurrency = \"20,25\", or a [services.concurrency] table", str)
		return nil
	}
	return &api.Concurrency{Type: "requests", SoftLimit: soft, HardLimit: hard}
}

// ignoreMachineChecks warns about [[...machine_checks]]: checks that run a
// throwaway machine of the new image during a deploy.
func (d *decoder) ignoreMachineChecks(s *section) {
	s.ignore("machine_checks", "perch deploy runs no test machines; the new machines' own checks and the smoke window decide instead")
}

func (d *decoder) concurrency(s *section) *api.Concurrency {
	c := &api.Concurrency{}
	c.Type, _, _ = s.oneOf("type", "connections", "requests")
	soft, _, softOK := s.count("soft_limit", 1)
	hard, hp, hardOK := s.count("hard_limit", 1)
	if softOK && hardOK && soft > hard {
		d.errorf(hp, "hard_limit %d is less than soft_limit %d; make hard_limit at least soft_limit", hard, soft)
	}
	c.SoftLimit, c.HardLimit = soft, hard
	s.done()
	return c
}

// service reads one [[services]]; ok is false when it serves nothing and is
// left out (Fly v1 files have such leftovers).
func (d *decoder) service(s *section) (sv Service, ok bool) {
	_, hasPorts := s.m["ports"]
	if _, hasInternal := s.m["internal_port"]; !hasInternal && !hasPorts {
		d.warnf(s.p, "%s ignored: it has no internal_port and no ports, so nothing could reach it (Fly serves nothing for it either)", s.p.section())
		return Service{}, false
	}
	if _, ok := s.m["protocol"]; ok {
		sv.Protocol, _, _ = s.oneOf("protocol", "tcp", "udp")
	} else {
		s.get("protocol")
		sv.Protocol = "tcp"
		d.warnf(s.p, "%s has no protocol; served as \"tcp\", as Fly v1 did (write protocol = \"tcp\" to say so)", s.p.section())
	}
	sv.InternalPort = d.internalPort(s)
	sv.Processes, _, _ = s.strs("processes", `["app"]`)
	for _, ps := range s.subs("ports") {
		port, ok := d.port(ps)
		if !ok {
			continue
		}
		if sv.Protocol != "" {
			d.claimPort(sv.Protocol, port.Port, ps.p.key("port"))
		}
		sv.Ports = append(sv.Ports, port)
	}
	sv.Concurrency = d.concurrencyOf(s)
	sv.AutoStopMachines, sv.AutoStartMachines, sv.MinMachinesRunning, sv.IdleTimeout = d.autoStartStop(s)
	sv.Checks = append(d.checks(s, "tcp_checks", "tcp"), d.checks(s, "http_checks", "http")...)
	if v, ok := s.m["script_checks"].([]any); ok && len(v) == 0 {
		s.accept("script_checks") // fly config save writes script_checks = []
	} else {
		s.ignore("script_checks", "script checks (Fly v1) are not run; use [[services.http_checks]] or [[services.tcp_checks]]")
	}
	d.ignoreMachineChecks(s)
	s.done()
	return sv, true
}

func (d *decoder) port(s *section) (api.Port, bool) {
	var port api.Port
	_, hasPort := s.m["port"]
	_, hasRange := s.m["start_port"]
	s.ignore("start_port", "port ranges are not supported yet; list each port in its own [[services.ports]]")
	s.accept("end_port")
	ok := hasPort
	if hasPort {
		port.Port, _, ok = s.port("port")
	} else if !hasRange {
		s.get("port")
		d.errorf(s.p, "[[services.ports]] needs a port, e.g. port = 443")
	}
	list, handlersOK := d.portHandlers(s) // ports.go
	port.Handlers = list
	port.ForceHTTPS, _, _ = s.boolean("force_https")
	d.portOptions(s, &port)
	s.done()
	return port, ok && handlersOK
}

// claimPort fails when a public port is already used by another service.
func (d *decoder) claimPort(proto string, port int, p path) {
	if d.ports == nil {
		d.ports = make(map[string]path)
	}
	key := proto + "/" + strconv.Itoa(port)
	prev, ok := d.ports[key]
	if !ok {
		d.ports[key] = p
		return
	}
	where := fmt.Sprintf("on line %d", d.lines.line(prev))
	if prev.String() == "http_service" {
		where = "by [http_service] " + where
	}
	d.errorf(p, "port %d is already used %s; use each public port once", port, where)
}
