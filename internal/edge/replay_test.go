package edge

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// replayMachine answers every request with Perch-Replay: to, unless the
// request is itself a replay. It reads the request body first if reads
// (otherwise the edge replays a body partly sent to it).
func replayMachine(t *testing.T, id, region, ip, to string, reads bool) *machine {
	return startMachine(t, id, region, ip, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(hdrReplaySrc) != "" {
			http.Error(w, "replayed back to "+id, http.StatusTeapot)
			return
		}
		if reads {
			io.Copy(io.Discard, r.Body)
		}
		w.Header().Set(hdrReplay, to)
		io.WriteString(w, "not for the client")
	})
}

// bodyMachine answers with its id, the request's Perch-Replay-Src and the
// sha256 of the body it got.
func bodyMachine(t *testing.T, id, region, ip string) *machine {
	return startMachine(t, id, region, ip, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(b)
		fmt.Fprintf(w, "%s src=%q len=%d sha=%s", id, r.Header.Get(hdrReplaySrc), len(b), hex.EncodeToString(sum[:8]))
	})
}

func post(t *testing.T, url, host string, body []byte) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/write", bytes.NewReader(body))
	req.Host = host
	return do(t, http.DefaultClient, req)
}

func shaOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// A machine's Perch-Replay answer sends the request, body and all, where
// it says; the client sees only the second answer.
func TestPerchReplay(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.app("billing")
	w.place("billing", bodyMachine(t, "bill1", "iad", "127.0.0.5"), 80, api.StateStarted)
	w.place("shop", bodyMachine(t, "fra1", "fra", "127.0.0.3"), 80, api.StateStarted)
	w.place("shop", bodyMachine(t, "sin1", "sin", "127.0.0.4"), 80, api.StateStarted)
	srv := w.serve(80)
	body := bytes.Repeat([]byte("0123456789abcdef"), 50_000) // 800 kB: under the 1 MiB kept

	for _, tc := range []struct {
		header, want string
		reads        bool
	}{
		{"region=fra", "fra1", false},
		{"instance=sin1", "sin1", true},
		{"app=billing", "bill1", true},
		{"region=sin;state=cart-42", "sin1", true},
		{"elsewhere=true", "fra1", true}, // the nearest machine other than the one that asked
	} {
		t.Run(tc.header, func(t *testing.T) {
			asker := replayMachine(t, "ams1", "ams", "127.0.0.2", tc.header, tc.reads)
			w.place("shop", asker, 80, api.StateStarted)
			w.commit()
			res, got := post(t, srv.URL, "shop.perch.local", body)
			src := `instance=ams1;region=ams`
			if st, ok := strings.CutPrefix(tc.header, "region=sin;"); ok {
				src += ";" + st
			}
			want := fmt.Sprintf("%s src=%q len=%d sha=%s", tc.want, src, len(body), shaOf(body))
			if res.StatusCode != http.StatusOK || got != want {
				t.Errorf("got %d %q, want 200 %q", res.StatusCode, got, want)
			}
			if res.Header.Get(hdrReplay) != "" || asker.hits.Load() != 1 {
				t.Errorf("client saw %s %q; the asking machine got %d requests, want 1", hdrReplay, res.Header.Get(hdrReplay), asker.hits.Load())
			}
		})
	}
}

// What the edge cannot replay, it says so to the client; a replay to the
// asking machine itself is allowed.
func TestPerchReplayRefused(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", bodyMachine(t, "fra1", "fra", "127.0.0.3"), 80, api.StateStarted)
	srv := w.serve(80)

	for _, tc := range []struct {
		name, header string
		body         []byte
		status       int
		says         string
	}{
		{"body over 1 MiB", "region=fra", make([]byte, maxReplayBody+1), http.StatusRequestEntityTooLarge, "over 1048576 bytes"},
		{"no machine there", "region=syd", nil, http.StatusBadGateway, "no started machine is there"},
		{"unknown app", "app=nope", nil, http.StatusBadGateway, "no started machine is there"},
		{"not understood", "somewhere", nil, http.StatusBadGateway, "does not understand"},
		// ams1 answers its own replay with 418: the edge passes that on.
		{"back to itself", "instance=ams1", nil, http.StatusTeapot, "replayed back to ams1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w.place("shop", replayMachine(t, "ams1", "ams", "127.0.0.2", tc.header, true), 80, api.StateStarted)
			w.commit()
			res, got := post(t, srv.URL, "shop.perch.local", tc.body)
			if res.StatusCode != tc.status || !strings.Contains(got, tc.says) {
				t.Errorf("got %d %q, want %d saying %q", res.StatusCode, got, tc.status, tc.says)
			}
		})
	}
}

// A machine that asks for a replay again after a replay gets no loop.
func TestPerchReplayOnce(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	ask := func(id, ip, to string) *machine {
		return startMachine(t, id, "ams", ip, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(hdrReplay, to)
		})
	}
	a, b := ask("a", "127.0.0.2", "instance=b"), ask("b", "127.0.0.3", "instance=a")
	w.place("shop", a, 80, api.StateStarted)
	w.place("shop", b, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	res, got := get(t, srv, "shop.perch.local", nil)
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(got, "replays a request once") {
		t.Errorf("got %d %q, want 502 saying a request is replayed once", res.StatusCode, got)
	}
	if a.hits.Load()+b.hits.Load() != 2 {
		t.Errorf("machines got %d requests, want 2", a.hits.Load()+b.hits.Load())
	}
}

func TestParseReplay(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want replayTo
		err  bool
	}{
		{in: "region=FRA", want: replayTo{region: "fra"}},
		{in: " instance=abc ; state=x=1 ", want: replayTo{instance: "abc", state: "x=1"}},
		{in: "app=Other;region=sin;prefer_self=true", want: replayTo{app: "other", region: "sin"}},
		{in: "elsewhere=true", want: replayTo{elsewhere: true}},
		{in: "state=only", err: true},
		{in: "region", err: true},
		{in: "", err: true},
	} {
		got, err := parseReplay(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("parseReplay(%q) = %+v, %v; want %+v (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// FuzzParseReplay: any header a machine sends parses or is refused, and
// what parses names somewhere to go.
func FuzzParseReplay(f *testing.F) {
	for _, s := range []string{"region=fra", "instance=abc;state=x", "app=b;region=sin", "elsewhere=true", ";;=", "region"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		to, err := parseReplay(v)
		if err == nil && to.region == "" && to.instance == "" && to.app == "" && !to.elsewhere {
			t.Errorf("parseReplay(%q) = %+v: accepted with nowhere to go", v, to)
		}
	})
}
