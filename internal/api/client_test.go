package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
)

func TestErrorHelpers(t *testing.T) {
	err := fmt.Errorf("deploy: %w", &HTTPError{StatusCode: 409, Message: "app name hello is taken"})
	if !IsConflict(err) || IsNotFound(err) || IsUnauthorized(err) {
		t.Errorf("409 wrapped: IsConflict %v IsNotFound %v IsUnauthorized %v", IsConflict(err), IsNotFound(err), IsUnauthorized(err))
	}
	if got := err.Error(); got != "deploy: app name hello is taken (HTTP 409)" {
		t.Errorf("message = %q", got)
	}
	if !IsNotFound(&HTTPError{StatusCode: 404}) || !IsUnauthorized(&HTTPError{StatusCode: 401}) || !IsTimeout(&HTTPError{StatusCode: 408}) {
		t.Error("status helpers do not match their codes")
	}
	if IsNotFound(errors.New("404")) || IsNotFound(nil) {
		t.Error("IsNotFound matched an error that is not an HTTPError")
	}
}

func TestUnreachableSaysWhatToCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	_, err = NewClient(url+"/", "tok").ListApps(context.Background())
	if err == nil {
		t.Fatal("no error from a closed port")
	}
	for _, want := range []string{url, "perch auth login", "perch server"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error %v does not wrap ECONNREFUSED", err)
	}
}
