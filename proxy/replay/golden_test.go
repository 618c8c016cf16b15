package replay

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "regenerate testdata/tshark.json from tshark")

const goldenPath = "testdata/tshark.json"

// goldenStream is what tshark reports of one TCP stream. Arrays are
// indexed by direction: 0 is from A, the sender of the stream's first
// packet, to B.
type goldenStream struct {
	A, B string
	// Frames, Wire (frame.len) and Payload (tcp.len) sum every segment,
	// retransmissions included.
	Frames, Wire, Payload [2]int64
	// Stream and SHA256 are the length and hash of the reassembled bytes
	// of each direction (tshark's "follow tcp").
	Stream [2]int64
	SHA256 [2]string
}

type goldenCapture struct {
	// Packets is the number of frames tshark read.
	Packets int64
	// ConvStreams is the number of conversations `tshark -z conv,tcp`
	// lists.
	ConvStreams int
	Streams     []goldenStream
}

// captureRoot returns the directory of the repository's copies of the
// shared captures, testdata/pcaps at the root (found by walking up to
// go.mod), so that the tests need nothing outside the repository.
func captureRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "testdata", "pcaps")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// capturePath returns the path of a capture named relative to
// captureRoot; it must exist.
func capturePath(tb testing.TB, name string) string {
	tb.Helper()
	p := filepath.Join(captureRoot(tb), filepath.FromSlash(name))
	if _, err := os.Stat(p); err != nil {
		tb.Fatal(err)
	}
	return p
}

// captures lists the captures under captureRoot, relative to it.
func captures(t testing.TB) (string, []string) {
	t.Helper()
	root := captureRoot(t)
	var names []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.HasSuffix(p, ".md") {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		names = append(names, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatalf("captures: %v", err)
	}
	if len(names) == 0 {
		t.Fatalf("no captures under %s", root)
	}
	sort.Strings(names)
	return root, names
}

func loadGolden(t *testing.T) map[string]goldenCapture {
	t.Helper()
	if *update {
		writeGolden(t)
	}
	b, err := os.ReadFile(goldenPath)
	if err != nil {
		t.Fatalf("%v (run go test -run TestCapturesMatchTshark -update with tshark installed)", err)
	}
	var g map[string]goldenCapture
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

func writeGolden(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Fatal("-update needs tshark")
	}
	root, names := captures(t)
	g := map[string]goldenCapture{}
	for _, name := range names {
		c, err := tsharkCapture(filepath.Join(root, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		g[name] = c
	}
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(goldenPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenPath, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// tshark runs tshark on a capture; a damaged capture makes it exit
// non-zero after printing what it read, which is kept.
func tshark(args ...string) ([]byte, error) {
	cmd := exec.Command("tshark", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("tshark %v: %v: %s", args, err, stderr.String())
	}
	return out, nil
}

func tsharkCapture(path string) (goldenCapture, error) {
	var c goldenCapture
	conv, err := tshark("-r", path, "-q", "-z", "conv,tcp")
	if err != nil {
		return c, err
	}
	c.ConvStreams = strings.Count(string(conv), "<->")

	fields, err := tshark("-r", path, "-T", "fields", "-E", "separator=/t",
		"-e", "tcp.stream", "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport",
		"-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport", "-e", "frame.len", "-e", "tcp.len")
	if err != nil {
		return c, err
	}
	sc := bufio.NewScanner(bytes.NewReader(fields))
	for sc.Scan() {
		c.Packets++
		f := strings.Split(sc.Text(), "\t")
		if len(f) < 9 || f[0] == "" {
			continue
		}
		idx, err := strconv.Atoi(f[0])
		if err != nil {
			return c, fmt.Errorf("tcp.stream %q", f[0])
		}
		src := endpointString(f[1], f[2], f[3])
		dst := endpointString(f[4], f[5], f[6])
		for len(c.Streams) <= idx {
			c.Streams = append(c.Streams, goldenStream{})
		}
		s := &c.Streams[idx]
		if s.A == "" {
			s.A, s.B = src, dst
		}
		d := 0
		if src != s.A {
			d = 1
		}
		wire, _ := strconv.ParseInt(f[7], 10, 64)
		payload, _ := strconv.ParseInt(f[8], 10, 64)
		s.Frames[d]++
		s.Wire[d] += wire
		s.Payload[d] += payload
	}
	if len(c.Streams) == 0 {
		return c, nil
	}
	args := []string{"-r", path, "-q"}
	for i := range c.Streams {
		args = append(args, "-z", fmt.Sprintf("follow,tcp,raw,%d", i))
	}
	follow, err := tshark(args...)
	if err != nil {
		return c, err
	}
	return c, parseFollow(follow, c.Streams)
}

// endpointString formats ip:port as netip does, from tshark's fields
// (the last address of a tunnelled packet is the inner one).
func endpointString(ip4, ip6, port string) string {
	ip := ip4
	if ip6 != "" {
		ip = ip6
	}
	if i := strings.LastIndexByte(ip, ','); i >= 0 {
		ip = ip[i+1:]
	}
	p, _ := strconv.ParseUint(port, 10, 16)
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip + ":" + port
	}
	return netip.AddrPortFrom(a, uint16(p)).String()
}

// parseFollow reads tshark's "follow,tcp,raw" sections: hex lines of node
// 0 start in column 0, those of node 1 with a tab.
func parseFollow(out []byte, streams []goldenStream) error {
	var cur *goldenStream
	var node0 string
	var data [2][]byte
	flush := func() {
		if cur == nil {
			return
		}
		for n := range 2 {
			d := n
			if node0 != cur.A {
				d = 1 - n
			}
			sum := sha256.Sum256(data[n])
			cur.Stream[d] = int64(len(data[n]))
			cur.SHA256[d] = hex.EncodeToString(sum[:])
		}
		cur, data = nil, [2][]byte{}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "Filter: tcp.stream eq "):
			flush()
			i, err := strconv.Atoi(strings.TrimPrefix(line, "Filter: tcp.stream eq "))
			if err != nil || i >= len(streams) {
				return fmt.Errorf("follow: %q", line)
			}
			cur = &streams[i]
		case strings.HasPrefix(line, "Node 0: "):
			node0 = followEndpoint(strings.TrimPrefix(line, "Node 0: "))
		case strings.HasPrefix(line, "Node 1: "), strings.HasPrefix(line, "Follow: "), strings.HasPrefix(line, "==="), line == "":
		case cur != nil:
			n := 0
			if strings.HasPrefix(line, "\t") {
				n = 1
			}
			b, err := hex.DecodeString(strings.TrimSpace(line))
			if err != nil {
				return fmt.Errorf("follow: %q: %v", line, err)
			}
			data[n] = append(data[n], b...)
		}
	}
	flush()
	return sc.Err()
}

// followEndpoint turns tshark's "addr:port" (IPv6 unbracketed) into
// netip's form.
func followEndpoint(s string) string {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s
	}
	return endpointString(s[:i], "", s[i+1:])
}
