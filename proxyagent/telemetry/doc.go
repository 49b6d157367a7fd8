// Package telemetry is the agent's telemetry pipeline
// (shared/spec/protocol.md §6): producers put events into a bounded Queue;
// a Telemetry's Run drains it every minute into the queue the sender works
// from (what does not fit is written to the event folder and read back
// later), and the sender refreshes the VM metadata and posts the events to
// the WireServer's telemetry endpoint as TelemetryData XML.
//
// Two kinds of event exist, as upstream has them:
//   - generic events (provider FFF0196F-…, Event id 7): every log line at
//     or above fileLogLevelForEvents (LogHandler, a log/slog handler the
//     agent adds beside its file and stderr handlers);
//   - extension-status events (provider 69B669B9-…, Event id 1): the
//     proxyAgentStatus object every 15 minutes (Options.Status).
//
// What leaves the machine: one POST /machine/?comp=telemetrydata per
// batch below 64 KiB to the configured WireServer, never signed, with the
// common headers of §1.1, x-ms-version 2012-11-30 and Content-Type
// text/xml; charset=utf-8; any 2xx is success, a batch is tried 5 times
// 15 s apart and then dropped (counted). Before each round the sender
// reads the goal state, the shared config it names and the IMDS instance
// document (signed with the latched key when there is one); a round with
// no metadata, now or from an earlier round, sends nothing and the
// events wait.
//
// Every message is redacted (proxyagent/redact) before it is cut to 4096
// bytes and queued, so no secret reaches the queue, the event files or
// the wire. Parameter values are XML-escaped as upstream escapes them
// (& ' " < >), tab, line feed and carriage return as character
// references, and characters XML 1.0 cannot carry (other control
// characters, invalid UTF-8) become U+FFFD (AppendEscaped). So a "]]>" in
// a message reaches the host as "]]&gt;" and can never end the CDATA
// section early.
//
// Bounds: each queue holds 1000 events; a full producer queue drops the
// newest (Counts.Dropped); at most maxEventFileCount generic and 1000
// extension-status overflow files exist, beyond which overflow is dropped.
package telemetry
