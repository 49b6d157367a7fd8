// Package hostsim simulates the Azure host endpoints a VM talks to, so the
// proxy agent can be tested end to end without Azure:
//
//   - WireServer (168.63.129.16:80): the secure-channel API (GET
//     /secure-channel/status in the v1.0 and v2.0 shapes, POST
//     /secure-channel/key, POST /secure-channel/key/{guid}/key-attestation)
//     and the goal state, health, agent-log and telemetry calls a guest
//     agent makes;
//   - IMDS (169.254.169.254:80): /metadata/instance and
//     /metadata/identity/oauth2/token with Azure's request rules (Metadata:
//     true required, X-Forwarded-For refused, duplicate query names
//     refused, a per-client rate limit);
//   - HostGAPlugin (168.63.129.16:32526): /health, /status, /versions,
//     /extensionArtifact and PUT /status;
//   - a storage account (StorageHandler) holding extension manifests and
//     packages and the VM status blob.
//
// It speaks the fabric protocol a guest agent's extension handler uses
// (fabric.go): the VM model's extension resources (VMModel, SetVMModel)
// become a goal state with an ExtensionsConfig, published packages
// (PublishPackage) are what waagent downloads, and every status blob the
// guest uploads becomes the InstanceView a user reads with
// `az vm get-instance-view`.
//
// Each service runs on its own listener, and the listener that received a
// request decides which service it belongs to. The host's half of the
// Metadata Security Protocol is enforced per service: in Enforce a request
// is served only if its x-ms-azure-host-authorization signature, recomputed
// with msp.StringToSign over exactly what was received (method, raw
// request-target, every header including Host, the body), verifies under
// the latched key and its x-ms-azure-host-date is within the allowed skew;
// otherwise it gets 401. In Audit it is served and journaled with its
// verdict; Disabled serves everything. The two exempt uploads
// (msp.Exempt) and the unauthenticated secure-channel calls (status and
// key issue) need no signature.
//
// The simulator is configured the way a user configures Azure: with the VM
// model's securityProfile.proxyAgentSettings (ProxyAgentSettings) and
// inVMAccessControlProfile version documents (ProfileVersion), from which
// it derives the secure-channel status it reports. Tests change both at run
// time through the Go API (Sim.SetSettings, Sim.SetProfile, ...) or the
// loopback control endpoint (see ControlHandler), and read the Journal of
// every request received to assert, for example, that nothing unsigned was
// ever served in Enforce.
//
// Deliberate simplifications:
//   - One VM, one latched key; the key is not bound to a vTPM and the status
//     always reports keyDeliveryMethod "http".
//   - Response bodies are plausible but static (fixed fake VM identity,
//     obviously fake tokens); no certificates, so extension settings are
//     public only; no Fast Track (/vmSettings is 404); no guest agent
//     self-update (no GAFamilies).
//   - A mode or defaultAccess change is reported immediately with a new rule
//     id (an id is a hash of the item), not after Azure's propagation delay.
//   - The v1.0 status shape cannot express Audit: a WireServer in Audit is
//     reported as "Disabled", and the host then enforces what it reported.
//   - The HostGAPlugin follows the WireServer's mode, as upstream's agent
//     assumes.
//   - The rate limit is a sliding one-second window per client IP on the
//     simulator's clock (Config.Now), so tests with a fixed clock are
//     deterministic.
//   - The host does not check authorization rules itself; rules are only
//     carried to the guest in the status, as in Azure.
//   - Verification sees what Go's HTTP server hands over: a chunked request
//     is verified with "transfer-encoding: chunked" (any Content-Length it
//     also carried is dropped by the server), and for an absolute-form
//     request-target the Host value is the target's host, because the
//     server discards the Host header then. The agent forwards origin-form
//     requests, which are verified byte for byte.
package hostsim
