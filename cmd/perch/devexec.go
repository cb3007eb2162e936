package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/devcluster"
)

// devExecCmd is `perch dev exec --from CITY -- CMD [ARGS...]`: CMD run as
// a client of an anycast dev world, in CITY's client namespace. perch
// becomes CMD (execve on a thread moved into the namespace), so its
// stdio, signals and exit code are CMD's.
func devExecCmd() *cobra.Command {
	var dir, from string
	cmd := &cobra.Command{
		Use:   "exec --from CITY -- CMD [ARGS...]",
		Short: "Run a command as a client in one city of an anycast dev world (perch dev up --anycast)",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("no command given: perch dev exec --from CITY -- CMD [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" {
				return errors.New("--from CITY is required: the city whose client runs the command (perch dev status lists them)")
			}
			if _, err := os.Stat(devcluster.InfoPath(dir)); errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("no dev world in %s (no world.json): start one with perch dev up --anycast", dir)
			}
			i, err := devcluster.ReadInfo(dir)
			if err != nil {
				return err
			}
			ns, err := i.ClientNamespace(from)
			if err != nil {
				return err
			}
			nsPath := filepath.Join("/run/netns", ns)
			if _, err := os.Stat(nsPath); err != nil {
				return fmt.Errorf("the anycast world in %s is not running (%s's namespace %s is gone): perch dev down --dir %s, then perch dev up --anycast", dir, from, ns, dir)
			}
			bin, err := exec.LookPath(args[0])
			if err != nil {
				return fmt.Errorf("perch dev exec: %w", err)
			}
			fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %s's namespace: %w", from, err)
			}
			// This thread enters the namespace and becomes the command; the
			// process is gone if that works.
			runtime.LockOSThread()
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				if errors.Is(err, unix.EPERM) {
					return errors.New("perch dev exec needs root (it enters a network namespace); run it with sudo")
				}
				return fmt.Errorf("enter %s's namespace: %w", from, err)
			}
			err = syscall.Exec(bin, args, os.Environ())
			return fmt.Errorf("run %s in %s: %w", bin, from, err)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", defaultDevDir(), "the world's directory")
	cmd.Flags().StringVar(&from, "from", "", "the city whose client runs the command")
	// Everything after CMD is CMD's: perch dev exec --from ams curl -sS URL.
	cmd.Flags().SetInterspersed(false)
	return cmd
}
