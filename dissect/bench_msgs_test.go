package dissect

import "testing"

// chromeKyberHello returns the ~1.8 KB post-quantum ClientHello of Chrome
// 125 from zeek/chrome-1250-tls-x25519-kyber.pcap.
func chromeKyberHello(tb testing.TB) []byte {
	tb.Helper()
	streams := pcapStreams(tb, "zeek/chrome-1250-tls-x25519-kyber.pcap")
	hellos := clientHellosOfStream(tb, streams[0].Payload(true))
	if len(hellos) != 1 {
		tb.Fatalf("%d hellos", len(hellos))
	}
	return hellos[0]
}

// BenchmarkClientHelloFingerprint is what the proxy does for every
// connection: parse the hello into a reused ClientHello and compute JA3,
// its MD5 and JA4.
//
//	go test -run '^$' -bench ClientHelloFingerprint -benchmem ./dissect/
func BenchmarkClientHelloFingerprint(b *testing.B) {
	body := chromeKyberHello(b)
	var h ClientHello
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Unmarshal(body); err != nil {
			b.Fatal(err)
		}
		fp := h.Fingerprint()
		if len(fp.JA4) != 36 {
			b.Fatal(fp.JA4)
		}
	}
}

func BenchmarkClientHelloParse(b *testing.B) {
	body := chromeKyberHello(b)
	var h ClientHello
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Unmarshal(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJA3(b *testing.B) {
	h, err := ParseClientHello(chromeKyberHello(b))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		h.JA3()
	}
}

func BenchmarkJA4(b *testing.B) {
	h, err := ParseClientHello(chromeKyberHello(b))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		h.JA4()
	}
}

// TestClientHelloReuseDoesNotAllocate: after the first hello, parsing into
// the same ClientHello allocates only the SNI string.
func TestClientHelloReuseDoesNotAllocate(t *testing.T) {
	body := chromeKyberHello(t)
	var h ClientHello
	if err := h.Unmarshal(body); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { h.Unmarshal(body) }); n > 1 {
		t.Errorf("%v allocations per parse, want at most 1 (the server name)", n)
	}
	// JA3 string + hash, JA4: three strings.
	if n := testing.AllocsPerRun(100, func() { h.Fingerprint() }); n > 3 {
		t.Errorf("%v allocations per fingerprint, want 3", n)
	}
}

// TestFreshHelloListsSizedOnce: a hello parsed into a fresh ClientHello
// (as each new connection's is) sizes its lists once — each holds exactly
// its entries — and costs one allocation per list, not one per growth.
func TestFreshHelloListsSizedOnce(t *testing.T) {
	body := chromeKyberHello(t)
	var h ClientHello
	if err := h.Unmarshal(body); err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string][2]int{
		"Extensions":          {len(h.Extensions), cap(h.Extensions)},
		"CipherSuites":        {len(h.CipherSuites), cap(h.CipherSuites)},
		"SupportedGroups":     {len(h.SupportedGroups), cap(h.SupportedGroups)},
		"SignatureAlgorithms": {len(h.SignatureAlgorithms), cap(h.SignatureAlgorithms)},
	} {
		// The allocator rounds up to its size classes.
		if l[0] == 0 || l[1] > 2*l[0]+8 {
			t.Errorf("%s: len %d, cap %d", name, l[0], l[1])
		}
	}
	allocs := testing.AllocsPerRun(100, func() {
		var h ClientHello
		if err := h.Unmarshal(body); err != nil {
			t.Fatal(err)
		}
	})
	// One per list (extensions, cipher suites, versions, groups,
	// signature algorithms, ALPN, key shares) and the server name: 20
	// when the lists grew one entry at a time. The race detector's
	// instrumentation adds a few of its own.
	want := 8.0
	if raceEnabled {
		want = 12
	}
	if allocs > want {
		t.Errorf("%.0f allocations to parse Chrome's hello into a fresh ClientHello, want at most %.0f", allocs, want)
	}
}
