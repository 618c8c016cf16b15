package main

import (
	"strings"
	"testing"
)

func TestTableAndTargets(t *testing.T) {
	o := defaultCompareOptions()
	o.reps = 3
	o.phases = []string{"stream", "hs", "idle", "connrate"}
	c := &comparison{o: o, res: newResults(), idleN: 3000}
	for _, n := range []string{"direct", "hap1", "hap2", "splice", "haka"} {
		c.configs = append(c.configs, proxyConfig{name: n})
	}
	add := func(phase, metric, cfg string, vs ...float64) {
		for _, v := range vs {
			c.res.add(phase, metric, cfg, v)
		}
	}
	add("stream", "gbps", "direct", 7, 6.9, 7.1)
	add("stream", "gbps", "hap1", 5, 4.9, 5.1)
	add("stream", "gbps", "hap2", 5, 5, 5)
	add("stream", "gbps", "splice", 5.5, 5.6, 5.4)
	add("stream", "gbps", "haka", 5.75, 5.7, 5.8) // 1.05x splice, 1.15x hap1
	add("hs-c1", "p50_us", "direct", 1600, 1700, 1650)
	add("hs-c1", "p50_us", "hap1", 1711, 1700, 1720)
	add("hs-c1", "p50_us", "haka", 1700, 1710, 1690)
	add("idle-n3000", "kib_per_conn", "haka", 7.2, 9.1)
	add("idle-n3000", "fds_per_conn", "haka", 2.003, 2.001)
	c.res.fail("idle", "haka")
	c.res.fail("connrate", "haka")
	add("connrate-c50", "rate", "hap2", 6000)

	tb := c.table()
	md := tb.markdown()
	t.Log("\n" + md)
	for _, want := range []string{
		"| measurement | direct | hap1 | hap2 | splice | haka | haka/splice | haka/hap1 | haka/hap2 |",
		"| TLS 1.3 stream, 1 conn, Gbit/s | 7.00 [6.90–7.10] | 5.00 (0.71×) [4.90–5.10] |",
		"5.75 (0.82×) [5.70–5.80] | 1.05× | 1.15× | 1.15× |",
		"| handshake latency c=1, p50 µs | 1650 [1600–1700] | 1711 (+61) [1700–1720] | – | – | 1700 (+50) [1690–1710] | – | -11 µs | – |",
		"| RSS per idle conn, KiB (3000 conns) | – | – | – | – | 8.15 [7.20–9.10] n=2 |",
		"| new conns/s, TLS-framed exchange, c=50 | – | – | 6000 n=1 | – | failed |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(md, "handshakes/s") {
		t.Error("a row without any data is shown")
	}

	tg := tb.targetsMarkdown()
	t.Log("\n" + tg)
	for _, want := range []string{
		"| 1. TLS stream ≥ 1.00× splice | 1.05× | yes |",
		"| 1. TLS stream ≥ 1.15× hap1 | 1.15× | yes |",
		"| 2. added handshake latency c=1 p50 ≤ hap1's | -11 µs | yes |",
		"| 2. added handshake latency c=1 p50 ≤ hap2's | no data | – |",
		"| 3. RSS per idle conn ≤ 8 KiB | 8.15 KiB | no |",
		"| 3. descriptors per idle conn ≤ 2 | 2.00 | yes |",
		"| 4. conns/s c=50 ≥ 1.00× hap2 | no data | – |",
	} {
		if !strings.Contains(tg, want) {
			t.Errorf("targets lack %q", want)
		}
	}
}

func TestNoTargetsWithoutSubject(t *testing.T) {
	o := defaultCompareOptions()
	c := &comparison{o: o, res: newResults(), configs: []proxyConfig{{name: "direct"}, {name: "splice"}}}
	c.res.add("stream", "gbps", "direct", 1)
	tb := c.table()
	if tb.targetsMarkdown() != "" || strings.Contains(tb.markdown(), "haka/") {
		t.Errorf("targets or ratio columns without haka:\n%s", tb.markdown())
	}
}

func TestRulesColumn(t *testing.T) {
	o := defaultCompareOptions()
	o.phases = []string{"hs"}
	c := &comparison{o: o, res: newResults(), configs: []proxyConfig{{name: "direct"}, {name: "haka"}, {name: "haka-rules"}}}
	c.res.add("hs-c50", "rate", "haka", 1000)
	c.res.add("hs-c50", "rate", "haka-rules", 900)
	md := c.table().markdown()
	if !strings.Contains(md, "| direct | haka | haka-rules | haka-rules/haka |") || !strings.Contains(md, "| 0.90× |") {
		t.Errorf("no rules-cost column:\n%s", md)
	}
}
