// Package insight turns the agent's JSON-lines audit log into answers for
// moving a VM to least privilege (GitHub issue 7): who called which
// metadata service with what (audit report), which rules would allow
// exactly the observed legitimate calls (rules suggest), and what a rules
// document would change if it were enforced (rules test). Decisions are
// made with the agent's own authorizer (package authz), so a replay judges
// a request exactly as the agent would.
//
// The command entry points RunAudit and RunRules parse flags with the
// standard flag package and return the process exit code:
//
//	0  success (rules test: no request would be newly denied)
//	1  findings (rules test: some request would be newly denied;
//	   rules suggest: the suggestion does not allow every observed call)
//	2  usage error or bad input: unknown flag or subcommand, missing or
//	   unreadable log, no readable record, bad lines with --strict, a
//	   rules document that does not parse or validate
//
// Corrupt, truncated or out-of-chain audit lines are warnings on stderr
// ("file:line: reason") and are skipped; they fail a command only when no
// record could be read at all, or with --strict. Unknown fields in audit
// records are ignored (the schema adds optional fields without a version
// change); unknown fields in rules documents are warnings with their line.
package insight
