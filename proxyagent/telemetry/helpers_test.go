package telemetry

import (
	"encoding/xml"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// fxMachine are fixed local facts, so documents are reproducible.
var fxMachine = Machine{Arch: "x86_64", OSVersion: "Linux:Debian GNU/Linux-12", RAMMiB: 7953, Processors: 2}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// param is one <Param> as a host's XML parser reads it.
type param struct {
	Name  string `xml:"Name,attr"`
	Value string `xml:"Value,attr"`
	T     string `xml:"T,attr"`
}

// parsedEvent is one <Event> with its CDATA parsed as params.
type parsedEvent struct {
	Provider string
	ID       string
	Params   []param
}

// value returns the named param's value ("" and false when absent).
func (e parsedEvent) value(name string) (string, bool) {
	for _, p := range e.Params {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// parseDoc reads a TelemetryData document the way the host must: the
// outer XML, then each event's CDATA text as a sequence of Param elements.
func parseDoc(t *testing.T, doc []byte) []parsedEvent {
	t.Helper()
	var td struct {
		XMLName   xml.Name `xml:"TelemetryData"`
		Version   string   `xml:"version,attr"`
		Providers []struct {
			ID     string `xml:"id,attr"`
			Events []struct {
				ID   string `xml:"id,attr"`
				Data string `xml:",chardata"`
			} `xml:"Event"`
		} `xml:"Provider"`
	}
	if err := xml.Unmarshal(doc, &td); err != nil {
		t.Fatalf("document does not parse: %v\n%.300s", err, doc)
	}
	if td.Version != "1.0" {
		t.Errorf("TelemetryData version %q", td.Version)
	}
	var out []parsedEvent
	for _, p := range td.Providers {
		for _, e := range p.Events {
			var ps struct {
				Params []param `xml:"Param"`
			}
			if err := xml.Unmarshal([]byte("<r>"+e.Data+"</r>"), &ps); err != nil {
				t.Fatalf("event CDATA does not parse as params: %v\n%.300s", err, e.Data)
			}
			out = append(out, parsedEvent{Provider: p.ID, ID: e.ID, Params: ps.Params})
		}
	}
	return out
}

// paramNames returns the names of an event's params in order.
func paramNames(e parsedEvent) string {
	var n []string
	for _, p := range e.Params {
		n = append(n, p.Name)
	}
	return strings.Join(n, ",")
}
