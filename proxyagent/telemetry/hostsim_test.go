package telemetry

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/opengpa/gpa/hostsim"
	"github.com/opengpa/gpa/internal/simtest"
	"github.com/opengpa/gpa/proxyagent/msp"
)

const simKeyGUID = "5b1f0a7e-2c3d-4e5f-8a9b-0c1d2e3f4a5b"

var simKeyHex = strings.Repeat("c3", 32)

// startSim runs the simulated host on loopback ports, Enforce on
// WireServer and IMDS when enforce is set, with a key latched from the
// start.
func startSim(t *testing.T, enforce bool) *hostsim.Sim {
	t.Helper()
	cfg := hostsim.Config{IMDSRateLimit: -1, Logger: discard,
		PresetKey: &msp.IssuedKey{AuthorizationScheme: msp.Scheme, GUID: simKeyGUID, Key: simKeyHex}}
	if enforce {
		on := true
		cfg.Settings = hostsim.ProxyAgentSettings{Enabled: &on,
			WireServer: &hostsim.HostEndpointSettings{Mode: "Enforce"}, IMDS: &hostsim.HostEndpointSettings{Mode: "Enforce"}}
	}
	return simtest.Start(t, cfg)
}

func simPipeline(sim *hostsim.Sim, key *msp.Key) *Telemetry {
	m := fxMachine
	return New(Options{Queue: NewQueue("1.2.3"), Version: "1.2.3", WireServer: sim.Addrs().WireServer, IMDS: sim.Addrs().IMDS, Machine: &m, Logger: discard,
		Key: func() *msp.Key { return key }})
}

// One send round against the simulated host: the metadata it serves is
// read (goal state → its SharedConfig → IMDS), the upload is accepted as
// a signature-exempt request, and its body is the document the pipeline
// built. In Enforce the metadata calls are signed with the latched key
// and verify; without the key they are refused and nothing is sent.
func TestAgainstHostSim(t *testing.T) {
	key, err := msp.NewKey(simKeyGUID, simKeyHex)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		enforce bool
		key     *msp.Key
		sent    bool
		verdict hostsim.Verdict
	}{
		{"disabled, no key", false, nil, true, hostsim.VerdictUnsigned},
		{"enforce, latched key", true, key, true, hostsim.VerdictValid},
		{"enforce, no key", true, nil, false, hostsim.VerdictUnsigned},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sim := startSim(t, c.enforce)
			tel := simPipeline(sim, c.key)
			tel.opts.Queue.Add(Event{EventLevel: "INFO", Message: `hostsim <check> & "quotes"`})
			queued := *tel.opts.Queue.items[0].generic
			tel.drain()
			tel.sendRound(context.Background())

			var upload *hostsim.Entry
			metadataCalls := 0
			for _, e := range sim.Journal().Entries() {
				switch {
				case e.Method == http.MethodPost && e.Target == msp.TelemetryDataPath:
					upload = &e
				case e.Method == http.MethodGet:
					metadataCalls++
					if e.Verdict != c.verdict {
						t.Errorf("%s %s: verdict %s, want %s", e.Service, e.Target, e.Verdict, c.verdict)
					}
					for _, h := range e.Headers {
						if strings.EqualFold(h.Name, msp.HeaderVersion) && e.Service == hostsim.IMDS {
							t.Errorf("IMDS call carries x-ms-version")
						}
					}
				}
			}
			if !c.sent {
				if upload != nil || metadataCalls != 1 || tel.Counts().Queued != 1 {
					t.Errorf("upload %v, %d metadata calls, counts %+v; want no upload, the goal state refused, the event queued", upload, metadataCalls, tel.Counts())
				}
				return
			}
			if metadataCalls != 3 {
				t.Errorf("%d metadata calls, want 3", metadataCalls)
			}
			if upload == nil {
				t.Fatal("no upload reached the host")
			}
			if upload.Verdict != hostsim.VerdictExempt || upload.Status != http.StatusOK {
				t.Errorf("upload: verdict %s status %d", upload.Verdict, upload.Status)
			}
			md := tel.metadata
			want := Metadata{ContainerID: hostsim.ContainerID, TenantName: hostsim.ContainerID, RoleName: hostsim.VMName,
				RoleInstanceName: hostsim.VMName, SubscriptionID: "00000000-0000-0000-0000-000000000000",
				ResourceGroupName: "hostsim-rg", VMID: hostsim.VMID, ImageOrigin: 1}
			if md == nil || *md != want {
				t.Errorf("metadata %+v, want %+v", md, want)
			}
			batches, _ := encodeBatches([]item{{generic: &queued}}, &VMData{Metadata: want, Machine: fxMachine}, "1.2.3")
			if upload.BodyLen != int64(len(batches[0].xml)) {
				t.Errorf("upload of %d bytes, want about %d", upload.BodyLen, len(batches[0].xml))
			}
			if c := tel.Counts(); c.Sent != 1 || c.Queued != 0 {
				t.Errorf("counts %+v", c)
			}
		})
	}
}
