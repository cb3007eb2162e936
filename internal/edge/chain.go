package edge

import "strings"

// A public port's handlers, as in Fly's services.ports[].handlers, form a
// chain applied to each connection in order: "proxy_proto" reads a PROXY
// header, "tls" terminates TLS, "http" serves HTTP requests; no handler at
// all means raw TCP to the machine. This edge serves the chain ["http"];
// ports whose chain it cannot serve yet are left closed (and logged), not
// half-served: a "tls" port answering plain HTTP would only confuse clients.

// servesHTTP says whether handlers is a chain this edge serves as plain HTTP.
func servesHTTP(handlers []string) bool {
	return len(handlers) == 1 && strings.EqualFold(handlers[0], "http")
}
