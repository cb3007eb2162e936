package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// Suspending a machine in a user namespace. CRIU 4.1, restoring a
// container whose user namespace is in its images, always makes the user
// namespace anew (with the same id map); the process it restores can
// then enter no namespace owned by the old one, so neither the pinned
// network namespace (hostnet's, owned by the machine's user namespace:
// pinNamespaces) nor the pinned user namespace can be joined ("Can't
// setns 17/net: Operation not permitted"). runc 1.1 hands CRIU every
// namespace its config has a path for as external (checkpoint:
// --external net[INODE]:extRootNetNS; restore: an inherited fd for it,
// and join-ns for the user namespace), and always --empty-ns net. So:
//
//   - runc knows the network namespace by a pin of its own
//     (runcNetnsPath), which a checkpoint unmounts first: runc then names
//     an inode that is not the machine's, and CRIU takes the namespace as
//     the container's own, to be made empty at restore. hostnet's pin
//     keeps it, and eth0 in it, while the machine is suspended.
//   - a restore runs runc with a config naming no namespace paths, and
//     CRIU with an action script (restoreScript) that, once CRIU has made
//     the namespaces, hands the agent the restored process: Start
//     (restoreNet) moves eth0 into its network namespace, has hostnet
//     configure it, and pins it in place of the old one before CRIU
//     restores the sockets.
//   - once restored, the user namespace's pin moves to the restored
//     process's, which the machine keeps from then on.

// runcNetnsPath is the machine's network namespace as its runc config
// names it: a second pin of hostnet's, which a checkpoint removes.
func (d *Driver) runcNetnsPath(id string) string {
	return d.usernsPath(id) + ".net"
}

// pinRuncNetns pins netns (hostnet's path) at runcNetnsPath as well.
func (d *Driver) pinRuncNetns(id, netns string) error {
	if netns == "" {
		return nil
	}
	dst := d.runcNetnsPath(id)
	if ok, _ := isMountPoint(dst); ok {
		return nil
	}
	return bindNS(netns, dst)
}

// bindNS pins the namespace file src at dst.
func bindNS(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("pin namespace: %w", err)
	}
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		return fmt.Errorf("pin namespace: %w", err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("pin namespace %s at %s: %w", src, dst, err)
	}
	return nil
}

// repin points the pin at dst to the namespace file src instead.
func repin(src, dst string) error {
	if err := unmountRootfs(dst); err != nil {
		return err
	}
	return bindNS(src, dst)
}

// Files of a restore in progress, in the machine's directory.
const (
	fileRestoreScript = "restore-net.sh" // CRIU's action script
	fileRestorePid    = "restore.pid"    // the restored process's pid, from the script
	fileRestoreReady  = "restore.ready"  // the agent's answer: "ok" or what failed
)

// restoreScript tells the agent, once CRIU has made the restored
// process's namespaces, which process to give the network, and waits
// for the answer.
const restoreScript = `#!/bin/sh
# Written by perch for CRIU (action-script): hands the restored machine's
# network namespace to the agent, which moves eth0 into it.
[ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] || exit 0
cd "$(dirname "$0")" || exit 1
echo "$CRTOOLS_INIT_PID" >` + fileRestorePid + `.tmp && mv ` + fileRestorePid + `.tmp ` + fileRestorePid + ` || exit 1
i=0
while [ ! -e ` + fileRestoreReady + ` ]; do
	i=$((i+1))
	[ $i -gt 1200 ] && { echo "perch: the agent did not set up the network" >&2; exit 1; }
	sleep 0.05
done
[ "$(cat ` + fileRestoreReady + `)" = ok ] || { cat ` + fileRestoreReady + ` >&2; exit 1; }
`

// prepareRestore readies a machine in a user namespace for `runc
// restore`: CRIU told to run restoreScript, the snapshot readable by
// the machine's root, and a config with no namespace paths.
func (d *Driver) prepareRestore(id string, r record) error {
	for _, f := range []string{fileRestorePid, fileRestoreReady} {
		if err := os.Remove(d.path(id, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if netnsPath(id, r.Spec.Net) != "" {
		script := d.path(id, fileRestoreScript)
		if err := os.WriteFile(script, []byte(restoreScript), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(d.path(id, fileCriuConf), []byte("action-script "+script+"\n"), 0o600); err != nil {
			return err
		}
	}
	// The restored tasks read their images as the host's root until CRIU
	// has written their user namespace's id map, then as the machine's
	// root: owned by the first, readable by the group of the second.
	gid := hostID(r.UIDBase, 0)
	err := filepath.WalkDir(d.path(id, dirSnapshot), func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o640)
		if e.IsDir() {
			mode = 0o750
		}
		if err := os.Lchown(p, 0, gid); err != nil {
			return err
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		return fmt.Errorf("hand the snapshot to the machine's root: %w", err)
	}
	return d.restoreConfig(id)
}

// restoreNet returns what Start calls while a restore runs: once the
// script names the restored process, its network namespace gets eth0
// (moved from the namespace the machine had) and hostnet's addresses and
// routes, and is pinned where the machine's was.
func (d *Driver) restoreNet(id string, r record) func() {
	netns := netnsPath(id, r.Spec.Net)
	done := netns == ""
	return func() {
		if done {
			return
		}
		pid, err := machinedir.ReadPid(d.path(id, fileRestorePid))
		if err != nil {
			return
		}
		done = true
		answer := "ok"
		if err := d.moveNet(id, r, pid); err != nil {
			d.log.Warn("network of the restored machine", "id", id, "err", err)
			answer = "perch: " + err.Error()
		}
		if err := os.WriteFile(d.path(id, fileRestoreReady), []byte(answer), 0o600); err != nil {
			d.log.Warn("answer the restore script", "id", id, "err", err)
		}
	}
}

// moveNet moves eth0 into process pid's network namespace and pins that
// namespace for hostnet and runc.
func (d *Driver) moveNet(id string, r record, pid int) error {
	out, err := exec.Command("ip", "-n", hostnet.NetnsName(id), "link", "set", "eth0", "netns", strconv.Itoa(pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("move eth0 into the restored machine: %w: %s", err, strings.TrimSpace(string(out)))
	}
	src := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	for _, dst := range []string{netnsPath(id, r.Spec.Net), d.runcNetnsPath(id)} {
		if err := repin(src, dst); err != nil {
			return err
		}
	}
	_, err = hostnet.Attach(id, r.Spec.Net)
	return err
}

// finishRestore, once the restore is over, puts back the machine's runc
// config and pins the restored process's user namespace (pid), or, if
// the restore failed (pid 0), leaves the namespaces for the next start
// to make.
func (d *Driver) finishRestore(id string, r record, pid int) error {
	for _, f := range []string{fileCriuConf, fileRestoreScript, fileRestorePid, fileRestoreReady} {
		os.Remove(d.path(id, f))
	}
	if err := d.runConfig(id); err != nil {
		return err
	}
	if pid != 0 {
		return repin("/proc/"+strconv.Itoa(pid)+"/ns/user", d.usernsPath(id))
	}
	if netns := netnsPath(id, r.Spec.Net); netns != "" {
		// The network namespace pinned may be the failed restore's, owned
		// by a user namespace that is gone: the next start makes both, and
		// the veth, anew.
		if err := d.unpinNamespaces(id, netns); err != nil {
			return err
		}
		return hostnet.Detach(id)
	}
	return nil
}

// fileRunConfig keeps the machine's runc config while a restore runs
// with the one restoreConfig writes.
const fileRunConfig = "config.run.json"

// restoreDirBind is where the machine's directory is bound during a
// restore: CRIU mounts the bundle's bind mounts (the /etc files,
// volumes) from the restored process, the machine's root, which cannot
// reach the state directory.
func (d *Driver) restoreDirBind(id string) string {
	return d.rootBind(id) + ".dir"
}

// restoreConfig keeps the machine's runc config and writes the one for
// `runc restore`: no namespace paths (CRIU makes both namespaces), and
// the bind mounts' sources reached through restoreDirBind.
func (d *Driver) restoreConfig(id string) error {
	keep := d.path(id, fileRunConfig)
	if !machinedir.Exists(keep) {
		if err := os.Rename(d.path(id, fileConfig), keep); err != nil {
			return err
		}
	}
	var s specs.Spec
	if err := machinedir.ReadJSON(keep, &s); err != nil {
		return err
	}
	for i, ns := range s.Linux.Namespaces {
		if ns.Type == specs.UserNamespace || ns.Type == specs.NetworkNamespace {
			s.Linux.Namespaces[i].Path = ""
		}
	}
	dir, bind := d.dir(id), d.restoreDirBind(id)
	for i, m := range s.Mounts {
		if rel, ok := strings.CutPrefix(m.Source, dir+"/"); ok {
			s.Mounts[i].Source = filepath.Join(bind, rel)
		}
	}
	if err := os.MkdirAll(bind, 0o700); err != nil {
		return err
	}
	if ok, _ := isMountPoint(bind); !ok {
		if err := unix.Mount(dir, bind, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s at %s: %w", dir, bind, err)
		}
	}
	// Traversable, not readable: the files keep their own modes.
	for _, p := range []string{dir, d.path(id, dirVolumes)} {
		if err := os.Chmod(p, 0o711); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return machinedir.WriteJSON(d.path(id, fileConfig), &s)
}

// runConfig undoes restoreConfig.
func (d *Driver) runConfig(id string) error {
	for _, p := range []string{d.dir(id), d.path(id, dirVolumes)} {
		if err := os.Chmod(p, 0o700); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	bind := d.restoreDirBind(id)
	if err := unmountRootfs(bind); err != nil {
		return err
	}
	if err := os.Remove(bind); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	keep := d.path(id, fileRunConfig)
	if !machinedir.Exists(keep) {
		return nil
	}
	return os.Rename(keep, d.path(id, fileConfig))
}
