package telemetry

import (
	"fmt"
	"os"
	"time"
	"unicode/utf8"

	"github.com/opengpa/gpa/proxyagent/redact"
	"github.com/opengpa/gpa/proxyagent/status"
	"golang.org/x/sys/unix"
)

// MaxMessageBytes is the longest event message (§6.1); a longer one is cut
// at a UTF-8 boundary.
const MaxMessageBytes = 4096

// Fixed values of the agent's generic events (§6.1, §6.2).
const (
	// TaskCommonLogger is the TaskName of events made from agent log lines.
	TaskCommonLogger = "CommonLogger"
	// TaskConnectionLogger is the TaskName of events made from
	// connection-log lines (AddConnectionLine).
	TaskConnectionLogger = "ConnectionLogger"
	// ModuleProxyAgent is the OperationId (module) of events made from log
	// lines, and every event's ExecutionMode.
	ModuleProxyAgent = "ProxyAgent"
	// EventName is the EventName of every generic event.
	EventName = "MicrosoftAzureGuestProxyAgent"
)

// Fixed values of the proxyAgentStatus event (§5.2).
const (
	StatusExtensionType = "Monitoring"
	StatusOperation     = "report_proxy_agent_status"
	StatusTaskName      = "loop_status"
)

// Event is a generic event (§6.1). The JSON names are upstream's, as in the
// overflow files; EventPid and EventTid are decimal text.
type Event struct {
	EventLevel  string `json:"EventLevel"`
	Message     string `json:"Message"`
	Version     string `json:"Version"`
	TaskName    string `json:"TaskName"`
	EventPid    string `json:"EventPid"`
	EventTid    string `json:"EventTid"`
	OperationId string `json:"OperationId"`
	TimeStamp   string `json:"TimeStamp"`
}

// StatusEvent is an extension-status event (§5.2): one operation of a
// named component, with its outcome and duration.
type StatusEvent struct {
	Name             string `json:"name"`
	Version          string `json:"version"`
	ExtensionType    string `json:"extensionType"`
	IsInternal       bool   `json:"isInternal"`
	Operation        string `json:"operation"`
	TaskName         string `json:"taskName"`
	OperationSuccess bool   `json:"operationSuccess"`
	Message          string `json:"message"`
	DurationMS       uint64 `json:"durationMs"`
	EventPid         string `json:"eventPid"`
	EventTid         string `json:"eventTid"`
	TimeStamp        string `json:"timeStamp"`
}

// CleanMessage returns msg as it may be queued: secrets redacted
// (redact.String, over the whole text so a secret cannot be cut out of a
// pattern's reach), then cut to MaxMessageBytes at a UTF-8 boundary.
func CleanMessage(msg string) string {
	msg = redact.String(msg)
	if len(msg) <= MaxMessageBytes {
		return msg
	}
	cut := MaxMessageBytes
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut]
}

// clean applies CleanMessage to the event's message.
func (e *Event) clean() { e.Message = CleanMessage(e.Message) }

// clean redacts the status event's message. It is not cut to
// MaxMessageBytes: it is the proxyAgentStatus JSON, which a cut would
// break (upstream only redacts it); the 64 KiB batch bounds it.
func (e *StatusEvent) clean() { e.Message = redact.String(e.Message) }

// pid is this process' id as events carry it.
var pid = fmt.Sprint(os.Getpid())

// tid returns the calling thread's id, 8 digits zero-padded (§6.1).
func tid() string { return fmt.Sprintf("%08d", unix.Gettid()) }

// timestamp renders t as events carry it: UTC YYYY-MM-DDTHH:MM:SS.mmm.
func timestamp(t time.Time) string { return status.FormatTimestamp(t) }
