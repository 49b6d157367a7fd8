// Package authz decides whether the proxy forwards a request to a metadata
// service (shared/spec/protocol.md §3). It compiles the host's
// authorization items, merged with the customer's local rule files, into
// immutable rule sets; matches requests against them exactly as upstream's
// legacy matcher does; applies the per-destination policy (WireServer and
// HostGAPlugin root-only, IMDS open by default, the proxy's own listener
// always forbidden); and keeps the installed rule sets in a Store that
// swaps whole snapshots atomically, so one request is judged against one
// version from start to end.
//
// Upstream quirks kept on purpose are documented where they are
// implemented, each with its number in protocol.md §7.5.
package authz
