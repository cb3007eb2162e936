package main

import (
	"fmt"
	"log"
	"net"
	"os"

	"github.com/miekg/dns"
)

// serveUDP starts what HELLO_UDP_ECHO_PORT and HELLO_DNS_PORT ask for: a
// UDP echo that answers each datagram with "<region> <machine>: " and the
// datagram, and a DNS server on UDP and TCP that answers any A question
// with 192.0.2.53 and any TXT question with "region=<region>
// machine=<machine>", so a client sees which machine answered.
func serveUDP(region, machine string) {
	if p := os.Getenv("HELLO_UDP_ECHO_PORT"); p != "" {
		pc, err := net.ListenPacket("udp", ":"+p)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("hello: UDP echo on :%s", p)
		go func() {
			buf := make([]byte, 65535)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					log.Fatal(err)
				}
				pc.WriteTo(append([]byte(fmt.Sprintf("%s %s: ", region, machine)), buf[:n]...), from)
			}
		}()
	}
	if p := os.Getenv("HELLO_DNS_PORT"); p != "" {
		h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(q)
			m.Authoritative = true
			for _, qq := range q.Question {
				hdr := dns.RR_Header{Name: qq.Name, Class: dns.ClassINET, Ttl: 5, Rrtype: qq.Qtype}
				switch qq.Qtype {
				case dns.TypeA:
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 53)})
				case dns.TypeTXT:
					m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{"region=" + region + " machine=" + machine}})
				}
			}
			w.WriteMsg(m)
		})
		for _, network := range []string{"udp", "tcp"} {
			srv := &dns.Server{Addr: ":" + p, Net: network, Handler: h}
			go func() { log.Fatal(srv.ListenAndServe()) }()
		}
		log.Printf("hello: DNS on :%s (UDP and TCP)", p)
	}
}
