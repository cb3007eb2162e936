package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/mesh"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/scheduler"
	"github.com/perchhq/perch/internal/store"
)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// runtimeSpec merges the image config, the machine config and Perch's own
// machine environment into what the driver runs.
func (a *Agent) runtimeSpec(spec store.MachineSpec, rootfs string, img v1.Config) (perchrt.Spec, error) {
	args := append([]string{}, img.Entrypoint...)
	cmd := img.Cmd
	if len(spec.Config.Init.Entrypoint) > 0 {
		args = append([]string{}, spec.Config.Init.Entrypoint...)
		cmd = nil // as in Docker: a new entrypoint resets the image's cmd
	}
	if len(spec.Config.Init.Cmd) > 0 {
		cmd = spec.Config.Init.Cmd
	}
	args = append(args, cmd...)
	if len(args) == 0 {
		return perchrt.Spec{}, fmt.Errorf("image %s has no entrypoint or cmd; set config.init.cmd", spec.Config.Image)
	}
	ip, err := netip.ParseAddr(spec.PrivateIP)
	if err != nil {
		return perchrt.Spec{}, fmt.Errorf("machine %s has no valid private ip %q", spec.ID, spec.PrivateIP)
	}
	addr6 := mesh.MachineAddr(a.orgOf(spec), a.sub6, ip)
	env := map[string]string{}
	var order []string
	set := func(kv string) {
		k, v, _ := strings.Cut(kv, "=")
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	set(defaultPath)
	for _, kv := range img.Env {
		set(kv)
	}
	for k, v := range spec.Config.Env {
		set(k + "=" + v)
	}
	for k, v := range machineEnv(spec, a.cfg.Region, addr6) {
		set(k + "=" + v)
	}
	// Secrets override [env] and the defaults (PORT, ...), as on Fly;
	// their names cannot be Perch's or Fly's own (FLY_*, PERCH_*).
	secrets, err := a.machineSecrets(spec) // secrets.go
	if err != nil {
		return perchrt.Spec{}, err
	}
	for k, v := range secrets {
		set(k + "=" + v)
	}
	files, err := machineFiles(spec, secrets)
	if err != nil {
		return perchrt.Spec{}, err
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	cwd := img.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	return perchrt.Spec{
		ID:       spec.ID,
		Rootfs:   rootfs,
		Process:  perchrt.Process{Args: args, Env: out, Cwd: cwd, User: img.User},
		Hostname: spec.ID,
		Net: perchrt.Net{
			Bridge: a.bridge, Addr: netip.PrefixFrom(ip, a.gw.Bits()), Gateway: a.gw.Addr(),
			Addr6: netip.PrefixFrom(addr6, a.sub6.Bits()),
			DNS:   []netip.Addr{a.gw.Addr()}, // the host's internal DNS (dns.go)
		},
		CPUs: spec.Config.Guest.CPUs,
		// No memory_mb is the smallest preset's, never unlimited.
		MemoryMB:    cmp.Or(spec.Config.Guest.MemoryMB, scheduler.DefaultMemoryMB),
		Files:       files,
		Suspendable: autostopsBySuspend(spec.Config),
	}, nil
}

// machineEnv is the environment every machine gets, under Perch's names
// and Fly's, so apps written for Fly run unchanged. FLY_PRIVATE_IP is the
// machine's 6PN address, as on Fly (what <id>.vm.<app>.internal answers);
// PERCH_PRIVATE_IP its IPv4 address on the host bridge. FLY_PROCESS_GROUP
// and PRIMARY_REGION come from the machine's config when perch deploy set
// them there (from perch.toml), else the "app" group and the machine's own
// region.
func machineEnv(spec store.MachineSpec, region string, addr6 netip.Addr) map[string]string {
	port := 8080
	if len(spec.Config.Services) > 0 {
		port = spec.Config.Services[0].InternalPort
	}
	e := map[string]string{
		"PERCH_APP_NAME":   spec.App,
		"PERCH_MACHINE_ID": spec.ID,
		"PERCH_REGION":     region,
		"PERCH_PRIVATE_IP": spec.PrivateIP,
		"FLY_APP_NAME":     spec.App,
		"FLY_MACHINE_ID":   spec.ID,
		"FLY_ALLOC_ID":     spec.ID,
		"FLY_REGION":       region,
		"FLY_IMAGE_REF":    spec.Config.Image,
	}
	if addr6.IsValid() {
		e["FLY_PRIVATE_IP"] = addr6.String()
	} else {
		e["FLY_PRIVATE_IP"] = spec.PrivateIP
	}
	defaults := map[string]string{
		"PORT":              strconv.Itoa(port),
		"FLY_PROCESS_GROUP": cmp.Or(spec.Config.Metadata["fly_process_group"], "app"),
		"PRIMARY_REGION":    cmp.Or(spec.Region, region),
	}
	for k, v := range defaults {
		if _, ok := spec.Config.Env[k]; !ok {
			e[k] = v
		}
	}
	return e
}

// autostopsBySuspend says whether a service of the machine autostops by
// suspending it: the runtime must then make a machine it can snapshot.
func autostopsBySuspend(c api.MachineConfig) bool {
	for _, svc := range c.Services {
		if svc.Autostop == api.AutostopSuspend {
			return true
		}
	}
	return false
}

// orgOf is spec's organisation: the spec's own, or for a spec written
// before specs carried it, its app's as the edge's table knows it (its
// 6PN address must be the one the edges and internal DNS compute).
func (a *Agent) orgOf(spec store.MachineSpec) string {
	if spec.Org != "" || a.edge == nil {
		return spec.Org
	}
	return a.edge.AppOrg(spec.App)
}
