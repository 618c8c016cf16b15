package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/hakaproxy/haka-proxy/cmd/haka-proxy/nftcmd"
	"github.com/hakaproxy/haka-proxy/proxy/nft"
)

// parseRun is parse through `haka-proxy run`, the form the configuration
// files, the unit and the manifests use.
func parseRun(t *testing.T, args ...string) (*rootOptions, error) {
	t.Helper()
	return parse(t, append([]string{"run"}, args...)...)
}

func nftConfig(t *testing.T, o *rootOptions) nft.Config {
	t.Helper()
	c, err := o.NFTOptions.Config()
	if err != nil {
		t.Fatalf("nftables options %+v: %v", o.NFTOptions, err)
	}
	if len(c.Interfaces) == 0 {
		c.Interfaces = nil // `nft-iface: []` and no key mean the same
	}
	return c
}

// The gateway flags, with and without `run`, and the listen port the
// nftables rules send to.
func TestGatewayFlags(t *testing.T) {
	for _, args := range [][]string{{"--tproxy"}, {"run", "--tproxy"}} {
		o, err := parse(t, args...)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		// With --tproxy and no --listen, the run command listens where
		// `haka-proxy nft apply` sends the connections by default.
		if o.Listen != nftcmd.DefaultListen || !o.TProxy || o.Upstream != "" || o.SpoofSource || o.NFT {
			t.Errorf("%q: options %+v", args, o)
		}
		if got, want := nftConfig(t, o).ListenPort, uint16(15001); got != want {
			t.Errorf("%q: the rules would send to :%d, want :%d", args, got, want)
		}
	}
	o, err := parseRun(t, "--tproxy", "--listen", "[::]:16000", "--spoof-source", "--nft",
		"--nft-ports", "443,8443", "--nft-iface", "eth1,eth2", "--nft-mark", "0x10/0xf0",
		"--nft-route-table", "200", "--no-ipv6", "--nft-fail-open")
	if err != nil {
		t.Fatal(err)
	}
	if !o.TProxy || !o.SpoofSource || !o.NFT || o.Listen != "[::]:16000" {
		t.Errorf("options %+v", o)
	}
	want := nft.Config{
		Table: "haka", Ports: []uint16{443, 8443}, Interfaces: []string{"eth1", "eth2"},
		ListenPort: 16000, Mark: 0x10, MarkMask: 0xf0, RouteTable: 200, IPv6: false, FailOpen: true,
	}
	if got := nftConfig(t, o); !reflect.DeepEqual(got, want) {
		t.Errorf("nftables config\n%+v\nwant\n%+v", got, want)
	}

	// An IPv4 listener is fine when only IPv4 is intercepted.
	if _, err := parse(t, "--tproxy", "--nft", "--listen", "0.0.0.0:15001", "--no-ipv6"); err != nil {
		t.Errorf("IPv4 listener, IPv4 rules: %v", err)
	}
	// Without --tproxy the default listener stays :8443.
	if o, err := parse(t, "--upstream", "127.0.0.1:443"); err != nil || o.Listen != ":8443" {
		t.Errorf("plain proxy: listen %q, %v", o.Listen, err)
	}
	// A listen address from the config file counts as given.
	p := writeConfig(t, "tproxy: true\nlisten: \"[::]:8443\"\n")
	if o, err := parse(t, "--config", p); err != nil || o.Listen != "[::]:8443" || o.NFTOptions.Listen != "[::]:8443" {
		t.Errorf("listen from the file: %+v, %v", o, err)
	}
}

// Each mistake is refused before anything runs, exit 2, with the fix.
func TestGatewayCommandLineErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--upstream", "10.0.0.1:443", "--spoof-source"}, "--spoof-source needs --tproxy"},
		{[]string{"--upstream", "10.0.0.1:443", "--nft"}, "--nft needs --tproxy"},
		{[]string{"--tproxy", "--upstream", "10.0.0.1:443"}, `--upstream "10.0.0.1:443" and --tproxy exclude each other`},
		{[]string{"--tproxy", "--listen", "127.0.0.1:15001"}, "must listen on every address"},
		{[]string{"--tproxy", "--listen", "192.0.2.1:15001", "--nft"}, "use --listen :15001"},
		{[]string{"--tproxy", "--listen", ":0"}, `port "0" is not 1-65535`},
		{[]string{"--tproxy", "--nft", "--listen", "0.0.0.0:15001"}, "listens on IPv4 only but the rules intercept IPv6 too: use --listen :15001, or --no-ipv6"},
		{[]string{"--tproxy", "--listen", "15001"}, "missing port in address"},
		{[]string{"--tproxy", "--proxy-protocol-in", "--proxy-protocol-trusted", "10.0.0.0/8"}, "--proxy-protocol-in and --tproxy exclude each other"},
		{[]string{"--tproxy", "--nft", "--nft-ports", "443,15001"}, "the listen port 15001 is also an intercepted port: choose another --listen port, or leave 15001 out of --nft-ports"},
		{[]string{"--tproxy", "--nft", "--nft-route-table", "254"}, "choose another --nft-route-table"},
		{[]string{"--tproxy", "--nft", "--nft-mark", "0x3/0x1"}, "outside its mask"},
		{[]string{"--tproxy", "--nft", "--nft-iface", "bad name"}, "interface name"},
		{[]string{"run", "--tproxy", "extra"}, `run takes no arguments, got "extra"`},
	} {
		d, out, errOut := testDeps()
		code := execute(tc.args, d)
		if code != 2 || !strings.Contains(errOut.String(), tc.want) || !strings.Contains(errOut.String(), "haka-proxy --help") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
		if out.String() != "" {
			t.Errorf("%q: wrote to stdout: %q", tc.args, out)
		}
	}
}

// Every gateway key of the config file, and the command line over it.
func TestGatewayConfigFileKeys(t *testing.T) {
	p := writeConfig(t, `
listen: "[::]:16001"
tproxy: true
spoof-source: true
nft: true
nft-ports: [443, 8443]
nft-iface: [eth1]
nft-mark: "0x4/0x4"
nft-route-table: 150
ipv6: false
nft-fail-open: true
`)
	o, err := parseRun(t, "--config", p, "--nft-route-table", "151")
	if err != nil {
		t.Fatal(err)
	}
	if !o.TProxy || !o.SpoofSource || !o.NFT || o.Listen != "[::]:16001" {
		t.Errorf("options %+v", o)
	}
	want := nft.Config{
		Table: "haka", Ports: []uint16{443, 8443}, Interfaces: []string{"eth1"},
		ListenPort: 16001, Mark: 0x4, MarkMask: 0x4, RouteTable: 151, IPv6: false, FailOpen: true,
	}
	if got := nftConfig(t, o); !reflect.DeepEqual(got, want) {
		t.Errorf("nftables config\n%+v\nwant\n%+v", got, want)
	}
	wantGiven := []string{"--nft-ports", "--nft-iface", "--nft-mark", "--nft-route-table", "--ipv6", "--nft-fail-open"}
	if !reflect.DeepEqual(o.nftFlagsGiven, wantGiven) {
		t.Errorf("nft flags given %q, want %q", o.nftFlagsGiven, wantGiven)
	}
}

// configs/gateway.yaml loads through the real loader, every key it uses
// is a flag, and it asks for the defaults of `haka-proxy nft apply`.
func TestGatewayConfig(t *testing.T) {
	path := filepath.Join(repoRoot(t), "configs", "gateway.yaml")
	o, err := parseRun(t, "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	if !o.TProxy || !o.NFT || o.SpoofSource || o.Upstream != "" || o.Listen != ":15001" ||
		o.Rules != "" || o.Metrics != "127.0.0.1:9090" || o.Alerts != "/var/log/haka-proxy/alerts.json" {
		t.Errorf("options %+v", o)
	}
	want := nft.Config{Table: "haka", Ports: []uint16{443}, ListenPort: 15001, Mark: 1, MarkMask: 0xffffffff, RouteTable: 100, IPv6: true}
	if got := nftConfig(t, o); !reflect.DeepEqual(got, want) {
		t.Errorf("configs/gateway.yaml gives\n%+v\nwant the defaults of nft apply\n%+v", got, want)
	}
	// Turning nft off, as its comment invites, keeps a valid file.
	if o, err := parseRun(t, "--config", path, "--nft=false"); err != nil || o.NFT {
		t.Errorf("with --nft=false: %+v, %v", o, err)
	}
}

// manifestContainer is the part of a Kubernetes manifest the tests read.
type manifestContainer struct {
	Name string   `yaml:"name"`
	Args []string `yaml:"args"`
}

type manifestObject struct {
	Kind string            `yaml:"kind"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				InitContainers []manifestContainer `yaml:"initContainers"`
				Containers     []manifestContainer `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func readManifest(t *testing.T, rel string) map[string]manifestObject {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]manifestObject{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var o manifestObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		objs[o.Kind] = o
	}
}

func container(t *testing.T, cs []manifestContainer, name string) manifestContainer {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return manifestContainer{}
}

// The DaemonSet's container runs `run --config` on its ConfigMap's
// gateway.yaml: both go through the real command and loader.
func TestGatewayDaemonSetConfig(t *testing.T) {
	objs := readManifest(t, "configs/kubernetes/gateway-daemonset.yaml")
	file := writeConfig(t, objs["ConfigMap"].Data["gateway.yaml"])
	args := container(t, objs["DaemonSet"].Spec.Template.Spec.Containers, "haka-proxy").Args
	if len(args) != 3 || args[0] != "run" || args[1] != "--config" || args[2] != "/etc/haka-proxy/gateway.yaml" {
		t.Fatalf("container args %q, want run --config /etc/haka-proxy/gateway.yaml", args)
	}
	o, err := parse(t, args[0], args[1], file)
	if err != nil {
		t.Fatal(err)
	}
	if !o.TProxy || !o.NFT || o.Listen != ":15001" {
		t.Errorf("options %+v", o)
	}
	if c := nftConfig(t, o); c.Mark != 1 || c.MarkMask != 1 {
		t.Errorf("mark %#x/%#x, want 0x1/0x1 (one bit, next to kube-proxy's)", c.Mark, c.MarkMask)
	}
}

// The TPROXY sidecar's proxy container is a valid run command, listening
// where its init container's `nft apply` sends the connections.
func TestSidecarTProxyManifest(t *testing.T) {
	spec := readManifest(t, "configs/kubernetes/sidecar-tproxy.yaml")["Deployment"].Spec.Template.Spec
	o, err := parse(t, container(t, spec.Containers, "haka-proxy").Args...)
	if err != nil {
		t.Fatal(err)
	}
	// nftcmd's own tests run the init container's arguments through
	// `nft apply`; here only its --listen matters.
	ini := nftcmd.DefaultOptions()
	ini.Listen = argAfter(container(t, spec.InitContainers, "haka-proxy-nft").Args, "--listen")
	applied, err := ini.Config()
	if err != nil {
		t.Fatal(err)
	}
	if !o.TProxy || o.NFT || o.Listen != ":15001" || nftConfig(t, o).ListenPort != applied.ListenPort {
		t.Errorf("sidecar options %+v; the init container sends to :%d", o, applied.ListenPort)
	}
}

func argAfter(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// The systemd unit's ExecStart is a valid command line.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "configs", "haka-proxy.service"))
	if err != nil {
		t.Fatal(err)
	}
	var exec []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			exec = strings.Fields(v)
		}
	}
	if len(exec) < 2 || exec[0] != "/usr/local/bin/haka-proxy" {
		t.Fatalf("ExecStart %q", exec)
	}
	args := exec[1:]
	for i, a := range args {
		if a == "/etc/haka-proxy/gateway.yaml" {
			args[i] = filepath.Join(repoRoot(t), "configs", "gateway.yaml")
		}
	}
	if o, err := parse(t, args...); err != nil || !o.TProxy || !o.NFT {
		t.Fatalf("ExecStart %q: %+v, %v", exec, o, err)
	}
}

// The --nft-* flags without --nft are said to do nothing, not silently
// ignored: the operator may believe the ports are intercepted.
func TestNFTFlagsWithoutNFT(t *testing.T) {
	d, _, errOut := testDeps()
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGTERM
	d.Signals = func(...os.Signal) (<-chan os.Signal, func()) { return sigs, func() {} }
	d.WithNFT = func(nftcmd.Options, *zap.Logger, func() error) error {
		t.Error("rules installed without --nft")
		return nil
	}
	code := execute([]string{"--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--nft-ports", "8443", "--no-ipv6"}, d)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut)
	}
	if !strings.Contains(errOut.String(), `"msg":"nftables settings have no effect without --nft`) ||
		!strings.Contains(errOut.String(), `"ignored":["--nft-ports","--no-ipv6"]`) {
		t.Errorf("no warning naming the flags:\n%s", errOut)
	}
}
