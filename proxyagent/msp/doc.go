// Package msp is the Metadata Security Protocol's vocabulary, defined once
// for the proxy agent, the simulated host, the tests and the benchmarks:
//
//   - the endpoints (WireServer, IMDS, HostGAPlugin and the agent's own
//     listener), the Service type and the one classification of a
//     destination address (endpoint.go);
//   - the secure channel's documents: key status, issued key, modes and the
//     authorization rules schema, with lists that are present but empty
//     kept apart from absent ones (securechannel.go, rules.go);
//   - the request-target canonicaliser that the proxy's checks, the
//     authorizer and the signer share, with the targets it refuses as
//     ambiguous (target.go);
//   - request endorsement: canonical form, HMAC key, the signed request as
//     written on the wire and its verification (signing.go, request.go);
//   - the agent's own goal-state, shared-config, instance-metadata and
//     telemetry calls: targets, headers and the service name (hostapi.go).
//
// Field names, header names and JSON spellings are upstream's
// (shared/spec/protocol.md); where this package decides differently the
// comment says so.
package msp
