// The agent's own WireServer and IMDS calls outside the secure channel:
// the VM metadata it reads for telemetry and the telemetry upload
// (shared/spec/protocol.md §6.2), and the service name it reports itself
// under (§0).

package msp

// ServiceName is the agent's service name (azure-proxy-agent.service),
// also the name of its status telemetry events.
const ServiceName = "azure-proxy-agent"

// Header names and values of the agent's own goal-state, shared-config,
// instance-metadata and telemetry calls.
const (
	// HeaderVersion names the WireServer API version of a request.
	HeaderVersion = "x-ms-version"
	// WireServerAPIVersion is the HeaderVersion value of the agent's
	// goal-state, shared-config and telemetry calls.
	WireServerAPIVersion = "2012-11-30"
	// HeaderMetadata is the header IMDS requires; IMDSMetadataValue is the
	// value the agent sends on its own instance-metadata call.
	HeaderMetadata    = "metadata"
	IMDSMetadataValue = "true"
	// TelemetryContentType is the Content-Type of a telemetry upload.
	TelemetryContentType = "text/xml; charset=utf-8"
)

// Request targets of those calls. The shared config is fetched at the
// target of the URL the goal state names.
const (
	// GoalStatePath is the WireServer goal state.
	GoalStatePath = "/machine?comp=goalstate"
	// TelemetryDataPath is the telemetry upload, one of the two requests
	// never signed (Exempt).
	TelemetryDataPath = "/machine/?comp=telemetrydata"
	// IMDSInstancePath is the instance metadata document at the API
	// version upstream asks for.
	IMDSInstancePath = "/metadata/instance?api-version=2018-02-01"
)
