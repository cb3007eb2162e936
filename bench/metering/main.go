// Command metering measures the agent's metering overhead (issue 12): the
// CPU a host spends each interval closing 1,000 machines' intervals into
// records, writing its spool (fsync, atomic rename) and publishing them to
// the PERCH_USAGE stream, against a peer in the same run: the same records
// marshalled and published with no spool. NATS runs as its own process
// (nats-server -js), so its CPU is reported apart. Run it with
// bench/metering/run.sh; bench/README.md records the output.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
)

func main() {
	machines := flag.Int("machines", 1000, "machines on the host")
	apps := flag.Int("apps", 100, "apps they belong to (each with egress)")
	rounds := flag.Int("rounds", 30, "intervals measured per side")
	flag.Parse()
	dir, err := os.MkdirTemp("", "perch-bench-metering")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ns := exec.Command("nats-server", "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", filepath.Join(dir, "nats"))
	if err := ns.Start(); err != nil {
		log.Fatalf("nats-server: %v", err)
	}
	defer ns.Process.Kill()
	var nc *nats.Conn
	for i := 0; ; i++ {
		if nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port)); err == nil {
			break
		}
		if i > 100 {
			log.Fatalf("connect: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: billing.Stream, Subjects: []string{billing.Filter},
		Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
		log.Fatal(err)
	}
	publish := func(ctx context.Context, b billing.Batch) error {
		data, err := json.Marshal(b)
		if err != nil {
			return err
		}
		_, err = js.Publish(ctx, billing.SubjectPrefix+b.Host, data,
			jetstream.WithMsgID(fmt.Sprintf("%s.%s.%d", b.Host, b.Records[0].ID, len(b.Records))))
		return err
	}
	clock := billing.FastClock{Epoch: time.Now(), Start: time.Now().UTC(), Rate: 1}
	m, err := billing.NewMeter(billing.MeterConfig{Host: "h1", Region: "iad", Path: filepath.Join(dir, "meter.json"), Clock: clock, Publish: publish})
	if err != nil {
		log.Fatal(err)
	}
	g := api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256}
	for i := range *machines {
		app := fmt.Sprintf("app%03d", i%*apps)
		m.Observe(fmt.Sprintf("%s.m%05d", app, i), app, fmt.Sprintf("m%05d", i), "iad", g, api.StateStarted, billing.Storage{})
	}
	egress := func() map[string]int64 {
		e := map[string]int64{}
		for a := range *apps {
			e[fmt.Sprintf("app%03d", a)] = 123456
		}
		return e
	}
	fmt.Printf("machines: %d (in %d apps) on one host; %d intervals a side; NATS in its own process\n\n", *machines, *apps, *rounds)

	var meterCPU, meterWall, peerCPU, peerWall []time.Duration
	var meterNATS, peerNATS time.Duration
	var records int
	for range *rounds {
		time.Sleep(5 * time.Millisecond) // some time to meter
		n0, c0, w0 := natsCPU(ns.Process.Pid), selfCPU(), time.Now()
		if err := m.Close(egress()); err != nil {
			log.Fatal(err)
		}
		records = m.Pending()
		if err := m.Send(ctx); err != nil {
			log.Fatal(err)
		}
		meterCPU, meterWall = append(meterCPU, selfCPU()-c0), append(meterWall, time.Since(w0))
		meterNATS += natsCPU(ns.Process.Pid) - n0

		// Peer: the same number of records, made and published, no spool.
		now := time.Now()
		batch := billing.Batch{Host: "h2"}
		n0, c0, w0 = natsCPU(ns.Process.Pid), selfCPU(), time.Now()
		for i := range records {
			batch.Records = append(batch.Records, billing.Record{ID: billing.MachineRecordID(fmt.Sprintf("p%05d", i), now), Kind: billing.KindMachine,
				App: "app", Region: "iad", Host: "h2", Machine: fmt.Sprintf("p%05d", i), Start: now.Add(-10 * time.Second), End: now,
				State: "started", CPUKind: "shared", CPUs: 1, MemoryMB: 256})
			if len(batch.Records) == 1000 {
				if err := publish(ctx, batch); err != nil {
					log.Fatal(err)
				}
				batch.Records = batch.Records[:0]
			}
		}
		if len(batch.Records) > 0 {
			if err := publish(ctx, batch); err != nil {
				log.Fatal(err)
			}
		}
		peerCPU, peerWall = append(peerCPU, selfCPU()-c0), append(peerWall, time.Since(w0))
		peerNATS += natsCPU(ns.Process.Pid) - n0
	}
	st, _ := os.Stat(filepath.Join(dir, "meter.json"))
	r := float64(*rounds)
	fmt.Printf("records per interval: %d (%d machines + %d apps' egress); spool file at rest %d bytes\n\n", records, *machines, *apps, st.Size())
	fmt.Printf("meter (close + spool with fsync + publish + spool again), per interval:\n  CPU median %s (p90 %s), wall median %s; nats-server CPU %s\n",
		med(meterCPU), p90(meterCPU), med(meterWall), (meterNATS / time.Duration(r)).Round(time.Microsecond))
	fmt.Printf("peer (the same records made and published, no spool), per interval:\n  CPU median %s (p90 %s), wall median %s; nats-server CPU %s\n",
		med(peerCPU), p90(peerCPU), med(peerWall), (peerNATS / time.Duration(r)).Round(time.Microsecond))
	fmt.Printf("ratio meter / peer (agent CPU): %.2f\n", float64(med(meterCPU))/float64(med(peerCPU)))
	fmt.Printf("at the default 10 s interval the meter takes %.3f %% of one core\n", 100*float64(med(meterCPU))/float64(billing.DefaultInterval))
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// natsCPU is a process's utime+stime from /proc.
func natsCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}

func med(d []time.Duration) time.Duration { return pct(d, 50) }
func p90(d []time.Duration) time.Duration { return pct(d, 90) }

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(time.Microsecond)
}
