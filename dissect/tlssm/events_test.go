package tlssm

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// Every anomaly name of package dissect and of the machine is documented
// in AnomalyNames, once.
func TestAnomalyNamesComplete(t *testing.T) {
	documented := map[string]int{}
	for _, a := range AnomalyNames {
		documented[a.Name]++
	}
	for name, n := range documented {
		if n != 1 {
			t.Errorf("%s documented %d times", name, n)
		}
	}
	re := regexp.MustCompile(`\bAnomaly[A-Za-z0-9]+\s*=\s*"([a-z0-9_]+)"`)
	files, _ := filepath.Glob("../*.go")
	own, _ := filepath.Glob("*.go")
	found := 0
	for _, f := range append(files, own...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			found++
			if documented[string(m[1])] == 0 {
				t.Errorf("%s: anomaly %q is not in AnomalyNames", f, m[1])
			}
		}
	}
	if found < len(AnomalyNames) {
		t.Errorf("found %d anomaly constants, %d documented", found, len(AnomalyNames))
	}
}

// The events of the contract are in EventID order and the machine
// registers each under its name.
func TestEventsContract(t *testing.T) {
	d, err := defaultDefinition()
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range Events {
		if e.ID != EventID(i) || e.ID.String() != e.Name {
			t.Errorf("Events[%d] is %d %q", i, e.ID, e.Name)
		}
		id, ok := d.m.Event(e.Name)
		if !ok || id != d.ids[e.ID] {
			t.Errorf("%s: machine event %d %v, want %d", e.Name, id, ok, d.ids[e.ID])
		}
	}
	if len(d.m.Warnings()) != 0 {
		t.Errorf("warnings: %v", d.m.Warnings())
	}
}
