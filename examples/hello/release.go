package main

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

// release is the sample app's release command, for tests of deploys:
// "ok" exits 0, "fail" exits 3, "hang" never exits; "migrate N" writes
// "schema N" with a PUT to $SCHEMA_URL (the machine that holds the
// app's volume: a release command's machine mounts none), trying for up
// to 30 s, and exits 4 if it could not. It never prints a secret's
// value, only whether it is set.
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
	case "migrate":
		if len(args) < 2 {
			fmt.Println("release: migrate needs a schema version")
			os.Exit(4)
		}
		if err := migrate(os.Getenv("SCHEMA_URL"), "schema "+args[1]); err != nil {
			fmt.Printf("release: migrate: %v\n", err)
			os.Exit(4)
		}
		fmt.Printf("release: schema %s written\n", args[1])
	}
	fmt.Println("release: done")
}

// migrate PUTs body to url until it is answered 200, for up to 30 s.
func migrate(url, body string) error {
	if url == "" {
		return fmt.Errorf("SCHEMA_URL is not set")
	}
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequest("PUT", url, strings.NewReader(body))
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("PUT %s: %s", url, resp.Status)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Second)
	}
}
