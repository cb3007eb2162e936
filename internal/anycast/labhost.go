package anycast

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// A lab host without Perch, for the lab's own test and bench/anycast: a
// program (the test or bench binary started again in a host namespace,
// with HostEnv's environment) that runs the real Speaker announcing the
// region's anycast addresses to its router, and a TCP responder on port
// 80 of each that answers "region=<region>". It prints "ready" once the
// speaker runs; a line "add ADDR" on its stdin adds an address (it
// answers "added ADDR" once it is announced). On SIGTERM it withdraws,
// keeps answering for 2 s, then exits.

// HostEnv is the environment of city's lab host announcing addrs
// (comma-separated), with BFD if bfd.
func (l *Lab) HostEnv(city, addrs string, bfd bool) []string {
	p := l.HostPeer(city)
	env := []string{"PERCH_ANYCAST_LAB_HOST=1", "PERCH_ANYCAST_REGION=" + city,
		fmt.Sprintf("PERCH_ANYCAST_PEER=%s,%d", p.Addr, p.ASN), "PERCH_ANYCAST_ADDRS=" + addrs,
		"PERCH_ANYCAST_ROUTER_ID=" + l.HostAddr(city).String()}
	if bfd {
		env = append(env, "PERCH_ANYCAST_BFD=1")
	}
	return env
}

// IsLabHost says whether this process was started as a lab host.
func IsLabHost() bool { return os.Getenv("PERCH_ANYCAST_LAB_HOST") != "" }

// RunLabHost runs a lab host until SIGTERM; it returns the exit code.
func RunLabHost() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	region := os.Getenv("PERCH_ANYCAST_REGION")
	peer, err := ParsePeer(os.Getenv("PERCH_ANYCAST_PEER"))
	if err != nil {
		log.Error("lab host", "err", err)
		return 2
	}
	var addrs []netip.Addr
	for _, s := range strings.Split(os.Getenv("PERCH_ANYCAST_ADDRS"), ",") {
		addrs = append(addrs, netip.MustParseAddr(s))
	}
	dev := &LinkDevice{Name: "anycast0"}
	if err := dev.Ensure(); err != nil {
		log.Error("lab host", "err", err)
		return 2
	}
	serve := func(a netip.Addr) error {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(a, 80).String())
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "region=%s\n", region)
				c.Close()
			}
		}()
		return nil
	}
	if err := dev.SetAddrs(addrs); err != nil {
		log.Error("lab host", "err", err)
		return 2
	}
	for _, a := range addrs {
		if err := serve(a); err != nil {
			log.Error("lab host", "err", err)
			return 2
		}
	}
	sp, err := StartSpeaker(context.Background(), SpeakerConfig{
		ASN: LabHostASN, RouterID: netip.MustParseAddr(os.Getenv("PERCH_ANYCAST_ROUTER_ID")), Peers: []Peer{peer},
		HoldTime: 3, ConnectRetry: 1, Log: log, BFD: os.Getenv("PERCH_ANYCAST_BFD") != "",
	})
	if err != nil {
		log.Error("lab host", "err", err)
		return 2
	}
	sp.SetAddrs(addrs)
	fmt.Println("ready")
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			s, ok := strings.CutPrefix(sc.Text(), "add ")
			a, err := netip.ParseAddr(s)
			if !ok || err != nil {
				log.Error("lab host: want a line \"add ADDR\"", "got", sc.Text())
				continue
			}
			addrs = append(addrs, a)
			if err := dev.SetAddrs(addrs); err != nil {
				log.Error("lab host", "err", err)
				continue
			}
			if err := serve(a); err != nil {
				log.Error("lab host", "err", err)
				continue
			}
			sp.SetAddrs(addrs)
			fmt.Println("added", a)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	// Withdraw first, keep serving while the routers move away, then go.
	sp.SetHealthy(false)
	time.Sleep(2 * time.Second)
	sp.Close()
	return 0
}
