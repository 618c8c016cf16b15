package nftcmd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/hakaproxy/haka-proxy/proxy/nft"
)

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// optionsFromYAML sets the nftables options from a config file's keys
// through the flags themselves, as the run command does with a config
// file: each key is a flag name.
func optionsFromYAML(t *testing.T, doc []byte) Options {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.StringVar(&o.Listen, "listen", o.Listen, "")
	AddFlags(fs, &o)
	n := 0
	for k, v := range m {
		f := fs.Lookup(k)
		if f == nil {
			continue
		}
		var s string
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, e := range x {
				parts[i] = fmt.Sprint(e)
			}
			s = strings.Join(parts, ",")
		default:
			s = fmt.Sprint(x)
		}
		if s == "" {
			continue
		}
		if err := f.Value.Set(s); err != nil {
			t.Errorf("key %s: %q: %v", k, s, err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no nftables keys in the file")
	}
	return o
}

func TestGatewayYAML(t *testing.T) {
	b, err := os.ReadFile(repoFile(t, "configs/gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	o := optionsFromYAML(t, b)
	c, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nft.Ruleset(c); err != nil {
		t.Fatalf("configs/gateway.yaml: %v", err)
	}
	want := nft.Config{Table: "haka", Ports: []uint16{443}, ListenPort: 15001, Mark: 1, MarkMask: 0xffffffff, RouteTable: 100, IPv6: true}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("configs/gateway.yaml gives\n%+v\nwant the defaults\n%+v", c, want)
	}
}

type k8sContainer struct {
	Name            string   `yaml:"name"`
	Args            []string `yaml:"args"`
	SecurityContext struct {
		RunAsUser                *int  `yaml:"runAsUser"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
			Add  []string `yaml:"add"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
}

type k8sObject struct {
	Kind string            `yaml:"kind"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				HostNetwork    bool           `yaml:"hostNetwork"`
				InitContainers []k8sContainer `yaml:"initContainers"`
				Containers     []k8sContainer `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func readManifests(t *testing.T, rel string) map[string]k8sObject {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]k8sObject{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		objs[o.Kind] = o
	}
	return objs
}

// checkCaps asserts the container drops everything, adds exactly caps,
// and cannot escalate.
func checkCaps(t *testing.T, c k8sContainer, caps ...string) {
	t.Helper()
	sc := c.SecurityContext
	if !reflect.DeepEqual(sc.Capabilities.Drop, []string{"ALL"}) || !reflect.DeepEqual(sc.Capabilities.Add, caps) {
		t.Errorf("container %s: capabilities drop %v add %v, want drop [ALL] add %v", c.Name, sc.Capabilities.Drop, sc.Capabilities.Add, caps)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container %s may escalate privileges", c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("container %s has a writable root filesystem", c.Name)
	}
}

func TestGatewayDaemonSet(t *testing.T) {
	objs := readManifests(t, "configs/kubernetes/gateway-daemonset.yaml")
	ds, ok := objs["DaemonSet"]
	if !ok {
		t.Fatal("no DaemonSet")
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("the gateway DaemonSet must use the host's network namespace")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	checkCaps(t, spec.Containers[0], "NET_ADMIN")
	cm, ok := objs["ConfigMap"]
	if !ok {
		t.Fatal("no ConfigMap")
	}
	o := optionsFromYAML(t, []byte(cm.Data["gateway.yaml"]))
	c, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nft.Ruleset(c); err != nil {
		t.Fatalf("the ConfigMap's gateway.yaml: %v", err)
	}
	if c.MarkMask != 0x1 {
		t.Errorf("the DaemonSet's mark should own one bit next to kube-proxy's: %#x/%#x", c.Mark, c.MarkMask)
	}
}

func TestSidecarManifest(t *testing.T) {
	objs := readManifests(t, "configs/kubernetes/sidecar-tproxy.yaml")
	spec := objs["Deployment"].Spec.Template.Spec
	if spec.HostNetwork {
		t.Error("the sidecar must stay in the pod's network namespace")
	}
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers", len(spec.InitContainers))
	}
	ini := spec.InitContainers[0]
	checkCaps(t, ini, "NET_ADMIN")
	// The init container's arguments are a valid `haka-proxy nft apply`.
	if len(ini.Args) < 2 || ini.Args[0] != "nft" || ini.Args[1] != "apply" {
		t.Fatalf("init container runs %v, want nft apply ...", ini.Args)
	}
	got, _, err := record(t, ini.Args[1:]...)
	if err != nil {
		t.Fatalf("init container args %v: %v", ini.Args, err)
	}
	if _, err := nft.Ruleset(got); err != nil {
		t.Fatalf("init container args %v: %v", ini.Args, err)
	}
	var proxy *k8sContainer
	for i, c := range spec.Containers {
		if c.Name == "haka-proxy" {
			proxy = &spec.Containers[i]
		}
	}
	if proxy == nil {
		t.Fatal("no haka-proxy container")
	}
	// IP_TRANSPARENT is all the sidecar needs: CAP_NET_RAW suffices
	// (TestCapabilities in proxy/tproxy).
	checkCaps(t, *proxy, "NET_RAW")
	if port, err := listenPort(argAfter(proxy.Args, "--listen")); err != nil || port != got.ListenPort {
		t.Errorf("the sidecar listens on %v (%v) but the rules send to :%d", argAfter(proxy.Args, "--listen"), err, got.ListenPort)
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
