package telemetry

import (
	"strconv"
	"unicode/utf8"
)

// MaxBatchBytes bounds one TelemetryData document: a batch's XML is
// always shorter than this (upstream closes a batch when adding an event
// would reach it).
const MaxBatchBytes = 64 << 10

// Provider ids and event ids of the two event kinds (§6.2).
const (
	GenericProviderID = "FFF0196F-EE4C-4EAF-9AA5-776F622DEB4F"
	StatusProviderID  = "69B669B9-4AF8-4C50-BDC4-6006FA76E975"
	genericEventID    = "7"
	statusEventID     = "1"
)

// Param types.
const (
	typeString = "mt:wstr"
	typeUint   = "mt:uint64"
	typeBool   = "mt:bool"
)

const (
	docHead = `<?xml version="1.0"?><TelemetryData version="1.0">`
	docTail = `</TelemetryData>`
)

// VMData is what every event carries about the machine: the host's
// metadata (Metadata) and the local facts (Machine), in the order of the
// common params.
type VMData struct {
	Metadata
	Machine
}

// item is one queued event: exactly one of generic and status is set.
type item struct {
	generic *Event
	status  *StatusEvent
}

func (it item) providerID() string {
	if it.generic != nil {
		return GenericProviderID
	}
	return StatusProviderID
}

// appendXML appends the item's <Event> element: the common VM params, then
// the event's own (§6.2). gaVersion is the agent's version, the GAVersion
// of status events.
func (it item) appendXML(dst []byte, vm *VMData, gaVersion string) []byte {
	id := statusEventID
	if it.generic != nil {
		id = genericEventID
	}
	dst = append(dst, `<Event id="`...)
	dst = append(dst, id...)
	dst = append(dst, `"><![CDATA[`...)
	dst = vm.appendParams(dst)
	if e := it.generic; e != nil {
		dst = appendUintParam(dst, "EventPid", e.EventPid)
		dst = appendUintParam(dst, "EventTid", e.EventTid)
		dst = appendParam(dst, "GAVersion", e.Version, typeString)
		dst = appendParam(dst, "ExecutionMode", ModuleProxyAgent, typeString)
		dst = appendParam(dst, "TaskName", e.TaskName, typeString)
		dst = appendParam(dst, "OpcodeName", e.TimeStamp, typeString)
		dst = appendParam(dst, "EventName", EventName, typeString)
		dst = appendParam(dst, "CapabilityUsed", e.EventLevel, typeString)
		dst = appendParam(dst, "Context1", e.Message, typeString)
		dst = appendParam(dst, "Context2", e.TimeStamp, typeString)
		dst = appendParam(dst, "Context3", e.OperationId, typeString)
	} else {
		e := it.status
		dst = appendUintParam(dst, "EventPid", e.EventPid)
		dst = appendUintParam(dst, "EventTid", e.EventTid)
		dst = appendParam(dst, "GAVersion", gaVersion, typeString)
		dst = appendParam(dst, "ExecutionMode", ModuleProxyAgent, typeString)
		dst = appendParam(dst, "TaskName", e.TaskName, typeString)
		dst = appendParam(dst, "OpcodeName", e.TimeStamp, typeString)
		dst = appendParam(dst, "ExtensionType", e.ExtensionType, typeString)
		dst = appendParam(dst, "IsInternal", boolText(e.IsInternal), typeBool)
		dst = appendParam(dst, "Name", e.Name, typeString)
		dst = appendParam(dst, "Version", e.Version, typeString)
		dst = appendParam(dst, "Operation", e.Operation, typeString)
		dst = appendParam(dst, "OperationSuccess", boolText(e.OperationSuccess), typeBool)
		dst = appendParam(dst, "Message", e.Message, typeString)
		dst = appendParam(dst, "Duration", strconv.FormatUint(e.DurationMS, 10), typeUint)
	}
	return append(dst, `]]></Event>`...)
}

// appendParams appends the common VM params, in upstream's order.
func (vm *VMData) appendParams(dst []byte) []byte {
	dst = appendParam(dst, "KeywordName", vm.KeywordName(), typeString)
	dst = appendParam(dst, "TenantName", vm.TenantName, typeString)
	dst = appendParam(dst, "RoleName", vm.RoleName, typeString)
	dst = appendParam(dst, "RoleInstanceName", vm.RoleInstanceName, typeString)
	dst = appendParam(dst, "ContainerId", vm.ContainerID, typeString)
	dst = appendParam(dst, "ResourceGroupName", vm.ResourceGroupName, typeString)
	dst = appendParam(dst, "SubscriptionId", vm.SubscriptionID, typeString)
	dst = appendParam(dst, "VMId", vm.VMID, typeString)
	dst = appendParam(dst, "ImageOrigin", strconv.FormatUint(vm.ImageOrigin, 10), typeUint)
	dst = appendParam(dst, "OSVersion", vm.OSVersion, typeString)
	dst = appendParam(dst, "RAM", strconv.FormatUint(vm.RAMMiB, 10), typeUint)
	dst = appendParam(dst, "Processors", strconv.FormatUint(vm.Processors, 10), typeUint)
	return dst
}

func boolText(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// appendUintParam appends a uint64 param from decimal text; text that is
// not a uint64 is sent as 0, as upstream parses it.
func appendUintParam(dst []byte, name, text string) []byte {
	n, err := strconv.ParseUint(text, 10, 64)
	if err != nil {
		n = 0
	}
	return appendParam(dst, name, strconv.FormatUint(n, 10), typeUint)
}

// appendParam appends <Param Name="name" Value="value" T="typ" />.
func appendParam(dst []byte, name, value, typ string) []byte {
	dst = append(dst, `<Param Name="`...)
	dst = append(dst, name...)
	dst = append(dst, `" Value="`...)
	dst = AppendEscaped(dst, value)
	dst = append(dst, `" T="`...)
	dst = append(dst, typ...)
	return append(dst, `" />`...)
}

// AppendEscaped appends s escaped for an XML attribute value: & ' " < >
// become &amp; &apos; &quot; &lt; &gt; as upstream writes them; tab, line
// feed and carriage return become &#9; &#10; &#13; (upstream sends them
// raw, and a conforming parser turns raw ones in an attribute into
// spaces); what XML 1.0 cannot carry at all — other control characters,
// U+FFFE, U+FFFF and invalid UTF-8 (surrogates included) — becomes U+FFFD.
func AppendEscaped(dst []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '&':
				dst = append(dst, "&amp;"...)
			case c == '\'':
				dst = append(dst, "&apos;"...)
			case c == '"':
				dst = append(dst, "&quot;"...)
			case c == '<':
				dst = append(dst, "&lt;"...)
			case c == '>':
				dst = append(dst, "&gt;"...)
			case c == '\t':
				dst = append(dst, "&#9;"...)
			case c == '\n':
				dst = append(dst, "&#10;"...)
			case c == '\r':
				dst = append(dst, "&#13;"...)
			case c < 0x20:
				dst = utf8.AppendRune(dst, utf8.RuneError)
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == 0xFFFE || r == 0xFFFF {
			r = utf8.RuneError
		}
		dst = utf8.AppendRune(dst, r)
		i += size
	}
	return dst
}

// batch is one TelemetryData document and the number of events in it.
type batch struct {
	xml    []byte
	events int
}

// encodeBatches renders items as TelemetryData documents each shorter than
// MaxBatchBytes, in queue order; within a document the events are grouped
// by provider, the providers in the order their first event came. An event
// that alone would not fit is left out and counted in tooLarge (with
// 4096-byte messages only absurd host metadata can cause it).
func encodeBatches(items []item, vm *VMData, gaVersion string) (out []batch, tooLarge int) {
	type group struct {
		id     string
		events []byte
	}
	var (
		groups []*group
		size   int
		count  int
		frag   []byte
	)
	flush := func() {
		if count == 0 {
			return
		}
		doc := make([]byte, 0, size)
		doc = append(doc, docHead...)
		for _, g := range groups {
			doc = append(doc, `<Provider id="`...)
			doc = append(doc, g.id...)
			doc = append(doc, `">`...)
			doc = append(doc, g.events...)
			doc = append(doc, `</Provider>`...)
		}
		doc = append(doc, docTail...)
		out = append(out, batch{xml: doc, events: count})
		groups, count = nil, 0
	}
	providerOverhead := func(id string) int { return len(`<Provider id="">`) + len(id) + len(`</Provider>`) }
	for _, it := range items {
		frag = it.appendXML(frag[:0], vm, gaVersion)
		id := it.providerID()
		for attempt := 0; attempt < 2; attempt++ {
			if count == 0 {
				size = len(docHead) + len(docTail)
			}
			var g *group
			for _, cand := range groups {
				if cand.id == id {
					g = cand
				}
			}
			need := len(frag)
			if g == nil {
				need += providerOverhead(id)
			}
			if size+need < MaxBatchBytes {
				if g == nil {
					g = &group{id: id}
					groups = append(groups, g)
				}
				g.events = append(g.events, frag...)
				size += need
				count++
				break
			}
			if count == 0 {
				tooLarge++
				break
			}
			flush()
		}
	}
	flush()
	return out, tooLarge
}
