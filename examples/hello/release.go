package main

import (
	"fmt"
	"os"
	"time"
)

// release is the sample app's release command, for tests of deploys:
// "ok" exits 0, "fail" exits 3, "hang" never exits. It never prints a
// secret's value, only whether it is set.
func release(args []string) {
	mode := "ok"
	if len(args) > 0 {
		mode = args[0]
	}
	set := "unset"
	if os.Getenv("DATABASE_URL") != "" {
		set = "set"
	}
	fmt.Printf("release: migrating (RELEASE_COMMAND=%s, DATABASE_URL %s)\n", os.Getenv("RELEASE_COMMAND"), set)
	switch mode {
	case "fail":
		fmt.Println("release: migration 0042 failed: column already exists")
		os.Exit(3)
	case "hang":
		fmt.Println("release: waiting for a lock that never comes")
		for {
			time.Sleep(time.Hour)
		}
	}
	fmt.Println("release: done")
}
