package machinedir

import (
	"context"
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// StartShim starts argv as a machine's shim and records it in shimFile.
// exited is closed once the shim has exited, as far as this process can
// tell: a shim adopted after an agent restart is not its child.
func StartShim(argv []string, shimFile string) (sh Shim, exited <-chan struct{}, err error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	// Its own session keeps the shim out of the agent's process group and
	// terminal signals; nil stdio means it holds none of the agent's pipes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return sh, nil, fmt.Errorf("shim: %w", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait() // reap it; after an agent restart init does
		close(done)
	}()
	sh = Shim{Pid: cmd.Process.Pid, StartedAt: time.Now().UTC()}
	if err := WriteJSON(shimFile, sh); err != nil {
		return sh, done, err
	}
	return sh, done, nil
}

// Gone reports whether the shim is no longer running: exited is closed
// when the shim is this process's child, else alive asks /proc.
func Gone(exited <-chan struct{}, alive func() bool) bool {
	select {
	case <-exited:
		return true
	default:
		return exited == nil && !alive()
	}
}

// WaitGone waits, for at most timeout, for a shim that has finished its
// work to exit.
func WaitGone(ctx context.Context, pid int, alive func() bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for alive() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("shim %d of the last run is still running: %w", pid, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}
