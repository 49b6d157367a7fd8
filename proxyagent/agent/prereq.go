package agent

import (
	"github.com/opengpa/gpa/proxyagent/prereq"
	"github.com/opengpa/gpa/proxyagent/redirector"
)

// redirectorFailure is the ebpfProgramStatus message when the redirector
// cannot load: each missing prerequisite of this machine with its fix
// first, then the load error with its verifier log.
func redirectorFailure(err error) string { return redirectorFailureOn(err, prereq.Paths{}) }

// redirectorFailureOn is redirectorFailure with the prerequisites read
// under p.
func redirectorFailureOn(err error, p prereq.Paths) string {
	msg := redirector.ErrorStatus(err).Message
	if r := prereq.Check(p); !r.OK() {
		msg = r.Message() + "; " + msg
	}
	return msg
}
