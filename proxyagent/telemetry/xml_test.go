package telemetry

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAppendEscaped(t *testing.T) {
	cases := []struct{ in, want string }{
		{"plain text", "plain text"},
		{`<>&"'`, "&lt;&gt;&amp;&quot;&apos;"},
		{"a]]>b", "a]]&gt;b"},
		{"tab\tlf\ncr\r", "tab&#9;lf&#10;cr&#13;"},
		{"nul\x00bel\x07esc\x1b", "nul\uFFFDbel\uFFFDesc\uFFFD"},
		{"del\x7f", "del\x7f"}, // allowed in XML 1.0
		{"bad\xffutf8\xc3", "bad\uFFFDutf8\uFFFD"},
		{"surrogate\xed\xa0\x80", "surrogate\uFFFD\uFFFD\uFFFD"},
		{"nonchar\uFFFE\uFFFF", "nonchar\uFFFD\uFFFD"},
		{"é€😀", "é€😀"},
		{"&amp;", "&amp;amp;"},
	}
	for _, c := range cases {
		if got := string(AppendEscaped(nil, c.in)); got != c.want {
			t.Errorf("AppendEscaped(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// sanitized is what a host's parser must read back for a value: the text
// with every character XML cannot carry replaced by U+FFFD.
func sanitized(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1, r == 0xFFFE, r == 0xFFFF, r < 0x20 && r != '\t' && r != '\n' && r != '\r':
			r = utf8.RuneError
		}
		b.WriteRune(r)
		i += size
	}
	return b.String()
}

// A generic event whose every text field is hostile still makes a document
// that parses, and the host reads each value back exactly (sanitised).
func FuzzEventRoundTrip(f *testing.F) {
	for _, s := range []string{"", `<>&"'`, "]]>", "]]]]>>", "a\r\nb\tc", "\x00\x01\xff", "<![CDATA[x]]>", "é\uFFFE"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := &Event{EventLevel: s, Message: s, Version: s, TaskName: s, EventPid: "1", EventTid: "2", OperationId: s, TimeStamp: s}
		vm := &VMData{Metadata: Metadata{TenantName: s, RoleName: s, ContainerID: s}, Machine: Machine{Arch: s, OSVersion: s}}
		batches, tooLarge := encodeBatches([]item{{generic: e}}, vm, s)
		if tooLarge != 0 || len(batches) != 1 {
			if len(s) > 4000 {
				return // beyond what a queued event can hold
			}
			t.Fatalf("%d batches, %d too large", len(batches), tooLarge)
		}
		evs := parseDoc(t, batches[0].xml)
		if len(evs) != 1 {
			t.Fatalf("%d events", len(evs))
		}
		want := sanitized(s)
		for _, name := range []string{"TenantName", "RoleName", "ContainerId", "OSVersion", "GAVersion", "TaskName", "CapabilityUsed", "Context1", "Context2", "Context3"} {
			if got, _ := evs[0].value(name); got != want {
				t.Errorf("%s = %q, want %q", name, got, want)
			}
		}
	})
}

// The exact bytes of a document with one event of each kind: the spec's
// layout, no whitespace between elements, the params in order.
func TestDocumentExactBytes(t *testing.T) {
	vm := &VMData{Metadata: fxMetadata, Machine: fxMachine}
	g := &Event{EventLevel: "WARN", Message: `x<y & "z" 'w' ]]> end`, Version: "1.2.3", TaskName: "CommonLogger",
		EventPid: "42", EventTid: "00001234", OperationId: "ProxyAgent", TimeStamp: "2025-04-23T12:00:00.123"}
	s := &StatusEvent{Name: "azure-proxy-agent", Version: "1.2.3", ExtensionType: "Monitoring", IsInternal: true,
		Operation: "report_proxy_agent_status", TaskName: "loop_status", OperationSuccess: false, Message: `{"status":"ERROR"}`,
		DurationMS: 900000, EventPid: "42", EventTid: "00000077", TimeStamp: "2025-04-23T12:15:00.000"}
	batches, _ := encodeBatches([]item{{status: s}, {generic: g}}, vm, "9.9.9")
	if len(batches) != 1 || batches[0].events != 2 {
		t.Fatalf("batches %+v", batches)
	}
	common := `<Param Name="KeywordName" Value="{&quot;CpuArchitecture&quot;:&quot;x86_64&quot;}" T="mt:wstr" />` +
		`<Param Name="TenantName" Value="` + fxTenant + `" T="mt:wstr" />` +
		`<Param Name="RoleName" Value="TestRole" T="mt:wstr" />` +
		`<Param Name="RoleInstanceName" Value="TestRole_IN_0" T="mt:wstr" />` +
		`<Param Name="ContainerId" Value="` + fxContainerID + `" T="mt:wstr" />` +
		`<Param Name="ResourceGroupName" Value="rg-telemetry" T="mt:wstr" />` +
		`<Param Name="SubscriptionId" Value="` + fxSubscription + `" T="mt:wstr" />` +
		`<Param Name="VMId" Value="` + fxVMID + `" T="mt:wstr" />` +
		`<Param Name="ImageOrigin" Value="1" T="mt:uint64" />` +
		`<Param Name="OSVersion" Value="Linux:Debian GNU/Linux-12" T="mt:wstr" />` +
		`<Param Name="RAM" Value="7953" T="mt:uint64" />` +
		`<Param Name="Processors" Value="2" T="mt:uint64" />`
	want := `<?xml version="1.0"?><TelemetryData version="1.0">` +
		`<Provider id="69B669B9-4AF8-4C50-BDC4-6006FA76E975"><Event id="1"><![CDATA[` + common +
		`<Param Name="EventPid" Value="42" T="mt:uint64" />` +
		`<Param Name="EventTid" Value="77" T="mt:uint64" />` +
		`<Param Name="GAVersion" Value="9.9.9" T="mt:wstr" />` +
		`<Param Name="ExecutionMode" Value="ProxyAgent" T="mt:wstr" />` +
		`<Param Name="TaskName" Value="loop_status" T="mt:wstr" />` +
		`<Param Name="OpcodeName" Value="2025-04-23T12:15:00.000" T="mt:wstr" />` +
		`<Param Name="ExtensionType" Value="Monitoring" T="mt:wstr" />` +
		`<Param Name="IsInternal" Value="True" T="mt:bool" />` +
		`<Param Name="Name" Value="azure-proxy-agent" T="mt:wstr" />` +
		`<Param Name="Version" Value="1.2.3" T="mt:wstr" />` +
		`<Param Name="Operation" Value="report_proxy_agent_status" T="mt:wstr" />` +
		`<Param Name="OperationSuccess" Value="False" T="mt:bool" />` +
		`<Param Name="Message" Value="{&quot;status&quot;:&quot;ERROR&quot;}" T="mt:wstr" />` +
		`<Param Name="Duration" Value="900000" T="mt:uint64" />` +
		`]]></Event></Provider>` +
		`<Provider id="FFF0196F-EE4C-4EAF-9AA5-776F622DEB4F"><Event id="7"><![CDATA[` + common +
		`<Param Name="EventPid" Value="42" T="mt:uint64" />` +
		`<Param Name="EventTid" Value="1234" T="mt:uint64" />` +
		`<Param Name="GAVersion" Value="1.2.3" T="mt:wstr" />` +
		`<Param Name="ExecutionMode" Value="ProxyAgent" T="mt:wstr" />` +
		`<Param Name="TaskName" Value="CommonLogger" T="mt:wstr" />` +
		`<Param Name="OpcodeName" Value="2025-04-23T12:00:00.123" T="mt:wstr" />` +
		`<Param Name="EventName" Value="MicrosoftAzureGuestProxyAgent" T="mt:wstr" />` +
		`<Param Name="CapabilityUsed" Value="WARN" T="mt:wstr" />` +
		`<Param Name="Context1" Value="x&lt;y &amp; &quot;z&quot; &apos;w&apos; ]]&gt; end" T="mt:wstr" />` +
		`<Param Name="Context2" Value="2025-04-23T12:00:00.123" T="mt:wstr" />` +
		`<Param Name="Context3" Value="ProxyAgent" T="mt:wstr" />` +
		`]]></Event></Provider></TelemetryData>`
	if got := string(batches[0].xml); got != want {
		t.Errorf("document differs\n got %s\nwant %s", got, want)
	}
	// And a parser reads the message back intact, "]]>" included.
	evs := parseDoc(t, batches[0].xml)
	if got, _ := evs[1].value("Context1"); got != g.Message {
		t.Errorf("Context1 read back as %q", got)
	}
}

// Events whose XML together exceeds 64 KiB are split into documents each
// below it, every event sent once, in order.
func TestBatchesSplitBelow64KiB(t *testing.T) {
	vm := &VMData{Metadata: fxMetadata, Machine: fxMachine}
	var items []item
	for i := range 60 {
		msg := fmt.Sprintf("event %03d ", i) + strings.Repeat("&", MaxMessageBytes-10) // escapes to 5x
		e := &Event{EventLevel: "INFO", Message: CleanMessage(msg), EventPid: "1", EventTid: "1"}
		items = append(items, item{generic: e})
		if i%7 == 0 {
			items = append(items, item{status: &StatusEvent{Name: "n", Message: fmt.Sprintf("status %03d", i)}})
		}
	}
	batches, tooLarge := encodeBatches(items, vm, "1")
	if tooLarge != 0 || len(batches) < 2 {
		t.Fatalf("%d batches, %d too large", len(batches), tooLarge)
	}
	var seen []string
	total := 0
	for _, b := range batches {
		if len(b.xml) >= MaxBatchBytes {
			t.Errorf("batch of %d bytes", len(b.xml))
		}
		evs := parseDoc(t, b.xml)
		if len(evs) != b.events {
			t.Errorf("batch says %d events, holds %d", b.events, len(evs))
		}
		total += len(evs)
		for _, e := range evs {
			if v, ok := e.value("Context1"); ok {
				seen = append(seen, v[:9])
			}
		}
	}
	if total != len(items) {
		t.Errorf("%d events sent, want %d", total, len(items))
	}
	for i, s := range seen {
		if want := fmt.Sprintf("event %03d", i); s != want {
			t.Fatalf("generic event %d is %q, want %q (order)", i, s, want)
		}
	}
	// A full batch is well used: splitting is not one event per batch.
	if len(batches) > 2*total*5*MaxMessageBytes/MaxBatchBytes {
		t.Errorf("%d batches for %d events", len(batches), total)
	}
}

// An event too large for any batch is left out and counted; the others go.
func TestTooLargeEventDropped(t *testing.T) {
	huge := &VMData{Metadata: Metadata{TenantName: strings.Repeat("t", MaxBatchBytes)}, Machine: fxMachine}
	batches, tooLarge := encodeBatches([]item{{generic: &Event{}}, {generic: &Event{}}}, huge, "1")
	if tooLarge != 2 || len(batches) != 0 {
		t.Errorf("%d batches, %d too large", len(batches), tooLarge)
	}
	small := &VMData{Metadata: fxMetadata, Machine: fxMachine}
	doc, _ := encodeBatches([]item{{generic: &Event{}}}, small, "1")
	if len(doc) != 1 || !bytes.HasPrefix(doc[0].xml, []byte(docHead)) {
		t.Errorf("small: %v", doc)
	}
}
