package devcluster

import (
	"context"
	"fmt"
	"syscall"
)

// Faults for tests: the control plane (and its embedded NATS) down while
// agents run on, and an agent killed without a word.

// StopServer stops the control plane and its embedded NATS; StartServer
// brings it back on the same data, address and NATS port.
func (w *World) StopServer() { w.stopServer() }

// StartServer starts the control plane StopServer stopped.
func (w *World) StartServer(ctx context.Context) error { return w.startServer(ctx) }

// KillAgent sends SIGKILL to region's agent and waits for it to die; its
// machines keep running under their shims. StartAgent starts it again.
func (w *World) KillAgent(region string) error {
	w.lifeMu.Lock()
	defer w.lifeMu.Unlock()
	w.mu.Lock()
	a := w.agents[region]
	delete(w.agents, region)
	w.mu.Unlock()
	if a == nil {
		return fmt.Errorf("no agent running for %s", region)
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill agent for %s: %w", region, err)
	}
	<-a.done
	return nil
}

// CrashAgent sends SIGKILL to region's agent as a crash would, and waits
// for it to die. Unlike KillAgent, the world (a supervisor) starts it again
// at once; AgentRestarts counts it and Info has the new pid.
func (w *World) CrashAgent(region string) error {
	w.mu.Lock()
	a := w.agents[region]
	w.mu.Unlock()
	if a == nil {
		return fmt.Errorf("no agent running for %s", region)
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill agent for %s: %w", region, err)
	}
	<-a.done
	return nil
}
