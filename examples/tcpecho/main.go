// Command tcpecho is Perch's sample raw TCP app: it greets each connection
// with the region and machine that took it and the client it sees, then
// echoes every byte back until the client is done. It listens on $PORT
// (7000 by default) for plain connections and, when $PROXY_PORT is set,
// there for connections that start with a PROXY protocol header (the edge's
// "proxy_proto" handler), which names the real client.
package main

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net"
	"os"

	"github.com/perchhq/perch/internal/proxyproto"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "7000"
	}
	if pp := os.Getenv("PROXY_PORT"); pp != "" {
		go serve(pp, true)
	}
	serve(port, false)
}

func serve(port string, proxied bool) {
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("tcpecho listening on :%s (PROXY protocol: %v)", port, proxied)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go echo(c, proxied)
	}
}

func echo(c net.Conn, proxied bool) {
	defer c.Close()
	r := bufio.NewReader(c)
	client := c.RemoteAddr().String()
	if proxied {
		h, err := proxyproto.Read(r)
		if err != nil {
			fmt.Fprintf(c, "expected a PROXY protocol header: %v\n", err)
			return
		}
		if h.Source.IsValid() {
			client = h.Source.String()
		}
	}
	fmt.Fprintf(c, "tcpecho in %s (machine %s) sees client %s\n", os.Getenv("PERCH_REGION"), os.Getenv("PERCH_MACHINE_ID"), client)
	if _, err := io.Copy(c, r); err != nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
