package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"time"
)

// resolver is Go's own, reading /etc/resolv.conf as any program in the
// machine would, so /dns shows what the machine's DNS answers.
var resolver = &net.Resolver{PreferGo: true}

// dnsAnswer is the JSON of GET /dns/{name}.
type dnsAnswer struct {
	Name  string   `json:"name"`
	Addrs []string `json:"addrs,omitempty"`
	TXT   []string `json:"txt,omitempty"`
}

// handleDNS serves GET /dns/{name}: the name's addresses, or with
// ?type=txt its TXT records (_apps.internal, regions.<app>.internal), as
// resolved from inside the machine; 500 with the resolver's error when
// the lookup fails.
func handleDNS(mux *http.ServeMux) {
	mux.HandleFunc("GET /dns/{name}", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		a := dnsAnswer{Name: r.PathValue("name")}
		var err error
		if r.URL.Query().Get("type") == "txt" {
			a.TXT, err = resolver.LookupTXT(ctx, a.Name)
		} else {
			var addrs []net.IPAddr
			addrs, err = resolver.LookupIPAddr(ctx, a.Name)
			for _, ip := range addrs {
				a.Addrs = append(a.Addrs, ip.String())
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a)
	})
}

// handleFetch serves GET /fetch?url=U: U fetched from inside the machine
// (another machine over 6PN, for tests of private networking), its body
// as the answer; 502 with the error when it cannot be fetched.
func handleFetch(mux *http.ServeMux) {
	client := &http.Client{Timeout: 5 * time.Second}
	mux.HandleFunc("GET /fetch", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
}
