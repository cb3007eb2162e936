package main

import (
	"os"

	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/runtime/runc"
	"github.com/perchhq/perch/internal/store"
	"github.com/spf13/cobra"
)

func shimCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "runc-shim",
		Short:              "Supervise one runc machine (started by the agent)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			store.QuietNATSSampler()
			os.Exit(runc.ShimMain(args))
			return nil
		},
	}
}

func microvmShimCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "microvm-shim",
		Short:              "Supervise one microVM's qemu (started by the agent)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			store.QuietNATSSampler()
			os.Exit(microvm.ShimMain(args))
			return nil
		},
	}
}
