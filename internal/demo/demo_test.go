package demo

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/opengpa/gpa/handler"
	"github.com/opengpa/gpa/hostsim"
)

// The host accepts the settings the demo prints, with the modes it says.
func TestSettingsAcceptedByHost(t *testing.T) {
	for _, mode := range []string{"Audit", "Enforce"} {
		s, err := hostsim.ParseSettings([]byte(settings("Enforce", mode)))
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if s.IMDS == nil || s.IMDS.Mode != mode || s.IMDS.InVMAccessControlProfileReferenceID != IMDSProfileID {
			t.Errorf("%s: imds settings %+v", mode, s.IMDS)
		}
		if s.WireServer == nil || s.WireServer.Mode != "Enforce" {
			t.Errorf("%s: wireServer settings %+v", mode, s.WireServer)
		}
	}
}

// The IMDS profile is valid and grants /metadata to root's curl only.
func TestIMDSProfile(t *testing.T) {
	p, err := hostsim.ParseProfile([]byte(imdsProfile))
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != IMDSProfileID || p.Properties.DefaultAccess != "Deny" || p.Properties.Rules == nil {
		t.Fatalf("profile %+v", p)
	}
	ids := p.Properties.Rules.Identities
	if len(ids) != 1 || ids[0].UserName != "root" || ids[0].ProcessName != "curl" {
		t.Errorf("identities %+v, want only root's curl", ids)
	}
}

// The VM model the demo gives the host is valid and carries the extension
// at the package's version.
func TestVMModelAcceptedByHost(t *testing.T) {
	b, _ := json.Marshal(vmModel(proxyAgentSettings("Audit", "Audit"), majorMinor("0.1.0")))
	m, err := hostsim.ParseVMModel(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Resources) != 1 || m.Resources[0].Properties.HandlerName() != handler.HandlerName || m.Resources[0].Properties.TypeHandlerVersion != "0.1" {
		t.Errorf("resources %+v", m.Resources)
	}
}

// Missing prerequisites are clear errors before anything is created.
func TestRunRefusesWithoutPrerequisites(t *testing.T) {
	empty := t.TempDir()
	err := Run(context.Background(), Options{BinDir: empty, ModuleDir: ".", Version: "1.0.0", Out: io.Discard})
	want := "make build"
	if os.Geteuid() != 0 {
		want = "needs root"
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Run with %s: %v, want an error mentioning %q", empty, err, want)
	}
}
