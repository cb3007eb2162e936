package main

import (
	"strings"
	"testing"
	"time"
)

func TestLatencyTable(t *testing.T) {
	city := func(region string, cold, med float64, from string) City {
		return City{Region: region, City: strings.ToUpper(region), ColdMS: cold, MedianMS: med, ServedBy: map[string]int{from: 20}}
	}
	before := Phase{Cities: []City{city("iad", 3, 3, "iad"), city("syd", 700, 240, "iad"), city("ewr", 30, 10, "iad")}}
	after := Phase{Cities: []City{city("iad", 3, 3, "iad"), city("ewr", 4, 3, "ewr"), city("syd", 4, 2.4, "syd")}}
	rows, err := join(before, after)
	if err != nil {
		t.Fatal(err)
	}
	got := latencyTable(rows, time.Millisecond, 20)
	for _, want := range []string{
		"| SYD | syd | 700.0 | 240.0 | 4.0 | 2.4 | 99 % | 2.0 | 1.20 | iad → syd |",
		"| EWR | ewr | 30.0 | 10.0 | 4.0 | 3.0 | 70 % | 2.0 | 1.50 | iad → ewr |",
		"| IAD | iad | 3.0 | 3.0 | 3.0 | 3.0 | 0 % | 2.0 | 1.50 | iad → iad |",
		"Median reduction across 3 cities: 70 %. Cities with a reduction of 80 % or more: 1 of 3 (below: ewr 70 %, iad 0 %).",
		"After ÷ physical limit: median 1.50, worst 1.50.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if i, j := strings.Index(got, "| SYD"), strings.Index(got, "| IAD"); i > j {
		t.Errorf("farthest city should come first:\n%s", got)
	}

	after.Cities = after.Cities[:2]
	if _, err := join(before, after); err == nil || !strings.Contains(err.Error(), "syd") {
		t.Errorf("a city missing after: err = %v, want it named", err)
	}
}
