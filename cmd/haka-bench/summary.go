package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// results holds every value measured, by phase, metric and config, and
// the failures by phase and config.
type results struct {
	vals  map[resultKey][]float64
	fails map[failKey]int
}

type resultKey struct{ phase, metric, config string }
type failKey struct{ phase, config string }

func newResults() *results {
	return &results{vals: make(map[resultKey][]float64), fails: make(map[failKey]int)}
}

func (r *results) add(phase, metric, config string, v float64) {
	k := resultKey{phase, metric, config}
	r.vals[k] = append(r.vals[k], v)
}

func (r *results) fail(phase, config string) { r.fails[failKey{phase, config}]++ }

func (r *results) get(phase, metric, config string) []float64 {
	return r.vals[resultKey{phase, metric, config}]
}

func (r *results) failed(phase, config string) int { return r.fails[failKey{phase, config}] }

func (r *results) failures() int {
	n := 0
	for _, v := range r.fails {
		n += v
	}
	return n
}

// median, and the extremes, of a non-empty sample.
func spread(v []float64) (med, lo, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

// rowKind says how a row's values compare.
type rowKind int

const (
	// higherBetter rows show the ratio to direct and ratios between
	// configs (throughput, rates).
	higherBetter rowKind = iota
	// lowerBetter rows show ratios between configs (memory).
	lowerBetter
	// latency rows show the latency added to direct's, and differences
	// between configs in µs: the added latencies' difference is the
	// difference of the medians.
	latency
)

type rowSpec struct {
	phase, metric string
	// failPhase is the phase whose failures show in the row: a failed hs
	// measurement leaves both its hs rows empty.
	failPhase string
	label     string
	kind      rowKind
	format    string
}

// targetKind is how a target is checked.
type targetKind int

const (
	atLeastRatio   targetKind = iota // subject/other >= bound
	noWorseLatency                   // subject - other <= 0 µs
	atMost                           // subject <= bound
)

type targetSpec struct {
	label         string
	phase, metric string
	other         string // config compared with; "" for an absolute bound
	kind          targetKind
	bound         float64
	unit          string
}

// table is the comparison's summary: one row per measurement, one column
// per config, then the subject's ratios to the configs named by the
// targets (and, with rules, haka-rules' to haka: what the rules cost).
type table struct {
	configs []string
	subject string      // "haka" when it was measured
	pairs   [][2]string // ratio columns: pair[0] / pair[1]
	reps    int
	rows    []rowSpec
	targets []targetSpec
	res     *results
}

func (c *comparison) table() table {
	t := table{reps: c.o.reps, res: c.res}
	for _, pc := range c.configs {
		t.configs = append(t.configs, pc.name)
	}
	if slices.Contains(t.configs, "haka") {
		t.subject = "haka"
		for _, o := range []string{"splice", "hap1", "hap2"} {
			if slices.Contains(t.configs, o) {
				t.pairs = append(t.pairs, [2]string{"haka", o})
			}
		}
		if slices.Contains(t.configs, "haka-rules") {
			t.pairs = append(t.pairs, [2]string{"haka-rules", "haka"})
		}
	}
	o := c.o
	if c.has("stream") {
		t.rows = append(t.rows, rowSpec{"stream", "gbps", "stream", "TLS 1.3 stream, 1 conn, Gbit/s", higherBetter, "%.2f"},
			rowSpec{"stream", "cpu_ms_per_gib", "stream", "proxy CPU per GiB streamed, ms", lowerBetter, "%.0f"})
		t.targets = append(t.targets,
			targetSpec{"1. TLS stream ≥ 1.00× splice", "stream", "gbps", "splice", atLeastRatio, 1.0, ""},
			targetSpec{"1. TLS stream ≥ 1.15× hap1", "stream", "gbps", "hap1", atLeastRatio, 1.15, ""},
			targetSpec{"1. TLS stream ≥ 1.15× hap2", "stream", "gbps", "hap2", atLeastRatio, 1.15, ""})
	}
	if c.has("hs") {
		p := hsPhase(o.hsC)
		t.rows = append(t.rows, rowSpec{p, "rate", "hs", fmt.Sprintf("TLS 1.3 handshakes/s, c=%d", o.hsC), higherBetter, "%.0f"})
		t.rows = append(t.rows, cpuRows(p, "hs", "handshake")...)
		t.targets = append(t.targets,
			targetSpec{fmt.Sprintf("2. handshakes/s c=%d ≥ 1.00× hap1", o.hsC), p, "rate", "hap1", atLeastRatio, 1.0, ""},
			targetSpec{fmt.Sprintf("2. handshakes/s c=%d ≥ 1.00× hap2", o.hsC), p, "rate", "hap2", atLeastRatio, 1.0, ""})
		if o.hsLatN > 0 {
			t.rows = append(t.rows,
				rowSpec{hsPhase(1), "p50_us", "hs", "handshake latency c=1, p50 µs", latency, "%.0f"},
				rowSpec{hsPhase(1), "p99_us", "hs", "handshake latency c=1, p99 µs", latency, "%.0f"})
			for _, hap := range []string{"hap1", "hap2"} {
				for _, m := range []string{"p50", "p99"} {
					t.targets = append(t.targets, targetSpec{fmt.Sprintf("2. added handshake latency c=1 %s ≤ %s's", m, hap), hsPhase(1), m + "_us", hap, noWorseLatency, 0, ""})
				}
			}
		}
	}
	if c.has("idle") {
		p := idlePhase(c.idleN)
		t.rows = append(t.rows,
			rowSpec{p, "kib_per_conn", "idle", fmt.Sprintf("RSS per idle conn, KiB (%d conns)", c.idleN), lowerBetter, "%.2f"},
			rowSpec{p, "fds_per_conn", "idle", "descriptors per idle conn", lowerBetter, "%.2f"})
		t.targets = append(t.targets,
			targetSpec{"3. RSS per idle conn ≤ 8 KiB", p, "kib_per_conn", "", atMost, 8, " KiB"},
			targetSpec{"3. descriptors per idle conn ≤ 2", p, "fds_per_conn", "", atMost, 2, ""})
	}
	if c.has("connrate") {
		p := connratePhase(o.connC)
		t.rows = append(t.rows, rowSpec{p, "rate", "connrate", fmt.Sprintf("new conns/s, TLS-framed exchange, c=%d", o.connC), higherBetter, "%.0f"})
		t.rows = append(t.rows, cpuRows(p, "connrate", "conn")...)
		t.targets = append(t.targets, targetSpec{fmt.Sprintf("4. conns/s c=%d ≥ 1.00× hap2", o.connC), p, "rate", "hap2", atLeastRatio, 1.0, ""})
		if o.connLatN > 0 {
			t.rows = append(t.rows,
				rowSpec{connratePhase(1), "p50_us", "connrate", "conn latency c=1, p50 µs", latency, "%.0f"},
				rowSpec{connratePhase(1), "p99_us", "connrate", "conn latency c=1, p99 µs", latency, "%.0f"})
			t.targets = append(t.targets, targetSpec{"4. added conn latency c=1 p50 ≤ hap1's", connratePhase(1), "p50_us", "hap1", noWorseLatency, 0, ""})
		}
	}
	if c.has("scale") {
		for _, k := range o.scaleConns {
			p := scalePhase(k)
			t.rows = append(t.rows, rowSpec{p, "gbps_per_conn", p, fmt.Sprintf("TLS streams, %s, Gbit/s per conn", plural(k, "conn")), higherBetter, "%.3g"})
		}
	}
	return t
}

// cpuRows are the proxy's CPU per operation of a loaded run: where the
// two cores go when the endpoints saturate them, so that every µs a
// proxy spends is an operation less per second.
func cpuRows(phase, failPhase, op string) []rowSpec {
	return []rowSpec{
		{phase, "cpu_us", failPhase, "proxy CPU per " + op + ", µs", lowerBetter, "%.0f"},
		{phase, "cpu_user_us", failPhase, "… of which user space", lowerBetter, "%.0f"},
		{phase, "cpu_sys_us", failPhase, "… of which kernel", lowerBetter, "%.0f"},
	}
}

func (t table) cell(r rowSpec, cfg string) string {
	vals := t.res.get(r.phase, r.metric, cfg)
	fails := t.res.failed(r.failPhase, cfg)
	if len(vals) == 0 {
		if fails > 0 {
			return "failed"
		}
		return "–"
	}
	med, lo, hi := spread(vals)
	s := fmt.Sprintf(r.format, med)
	if dv := t.res.get(r.phase, r.metric, "direct"); cfg != "direct" && len(dv) > 0 {
		dmed, _, _ := spread(dv)
		switch r.kind {
		case higherBetter:
			if dmed > 0 {
				s += fmt.Sprintf(" (%.2f×)", med/dmed)
			}
		case latency:
			s += fmt.Sprintf(" (%+.0f)", med-dmed)
		}
	}
	if len(vals) > 1 {
		s += " [" + fmt.Sprintf(r.format, lo) + "–" + fmt.Sprintf(r.format, hi) + "]"
	}
	if len(vals) < t.reps || fails > 0 {
		s += fmt.Sprintf(" n=%d", len(vals))
	}
	return s
}

// measured reports whether any config has a value or a failure in r.
func (t table) measured(r rowSpec) bool {
	for _, c := range t.configs {
		if len(t.res.get(r.phase, r.metric, c)) > 0 || t.res.failed(r.failPhase, c) > 0 {
			return true
		}
	}
	return false
}

// versus compares config x with config y on one row: x/y, or x-y in µs
// for latency.
func (t table) versus(phase, metric string, kind rowKind, x, y string) (string, float64, bool) {
	a, b := t.res.get(phase, metric, x), t.res.get(phase, metric, y)
	if len(a) == 0 || len(b) == 0 {
		return "–", 0, false
	}
	ma, _, _ := spread(a)
	mb, _, _ := spread(b)
	if kind == latency {
		d := ma - mb
		return fmt.Sprintf("%+.0f µs", d), d, true
	}
	if mb == 0 {
		return "–", 0, false
	}
	return fmt.Sprintf("%.2f×", ma/mb), ma / mb, true
}

func (t table) markdown() string {
	var b strings.Builder
	b.WriteString("| measurement |")
	for _, c := range t.configs {
		b.WriteString(" " + c + " |")
	}
	for _, p := range t.pairs {
		fmt.Fprintf(&b, " %s/%s |", p[0], p[1])
	}
	b.WriteString("\n|---|")
	b.WriteString(strings.Repeat("---:|", len(t.configs)+len(t.pairs)))
	b.WriteString("\n")
	for _, r := range t.rows {
		if !t.measured(r) {
			continue // a phase cut short by an interrupt
		}
		b.WriteString("| " + r.label + " |")
		for _, c := range t.configs {
			b.WriteString(" " + t.cell(r, c) + " |")
		}
		for _, p := range t.pairs {
			s, _, _ := t.versus(r.phase, r.metric, r.kind, p[0], p[1])
			b.WriteString(" " + s + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// targets checks the performance targets the subject is held to, for the
// rows and configs that were measured.
func (t table) targetsMarkdown() string {
	if t.subject == "" {
		return ""
	}
	var b strings.Builder
	for _, tg := range t.targets {
		var shown string
		var met bool
		switch tg.kind {
		case atLeastRatio, noWorseLatency:
			if !slices.Contains(t.configs, tg.other) {
				continue
			}
			kind := higherBetter
			if tg.kind == noWorseLatency {
				kind = latency
			}
			s, v, ok := t.versus(tg.phase, tg.metric, kind, t.subject, tg.other)
			if !ok {
				shown = "no data"
				break
			}
			shown = s
			if tg.kind == atLeastRatio {
				// Compared as printed: 1.145 shows as 1.15× and meets 1.15.
				met = math.Round(v*100)/100 >= tg.bound
			} else {
				met = math.Round(v) <= 0
			}
		case atMost:
			v := t.res.get(tg.phase, tg.metric, t.subject)
			if len(v) == 0 {
				shown = "no data"
				break
			}
			med, _, _ := spread(v)
			shown = fmt.Sprintf("%.2f%s", med, tg.unit)
			met = math.Round(med*100)/100 <= tg.bound
		}
		verdict := "no"
		if met {
			verdict = "yes"
		} else if shown == "no data" {
			verdict = "–"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", tg.label, shown, verdict)
	}
	if b.Len() == 0 {
		return ""
	}
	return "Targets for " + t.subject + " (medians; a latency target compares the latency each adds to direct's):\n\n| target | measured | met |\n|---|---:|:---:|\n" + b.String()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
